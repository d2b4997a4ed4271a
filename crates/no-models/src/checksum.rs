//! Checksums of tensor data in safetensors files (checkpoints and datasets).
//!
//! A file carries, in its metadata under [`METADATA_KEY`], a JSON object mapping every
//! tensor's name to the CRC-32 (IEEE polynomial, as the `crc32fast` crate computes it) of
//! that tensor's raw little-endian data bytes, as 8 lowercase hexadecimal digits. Readers
//! verify every listed tensor before using it, so a flipped byte in the data is an error
//! that names the tensor instead of a silently different prediction. Files written before
//! checksums existed have no such key and load unverified; a key that is present but
//! malformed, or that omits a tensor of the file, is an error. `fhn-solver` writes the same
//! key in its dataset files.

use std::collections::BTreeMap;

use safetensors::SafeTensors;

/// The metadata key holding the checksums.
pub const METADATA_KEY: &str = "tensor_crc32";

/// The checksum of one tensor's data bytes, as stored in the metadata.
pub fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// The metadata value for a set of named tensors given by their data bytes.
pub fn metadata_value<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let map: BTreeMap<&str, String> = tensors
        .into_iter()
        .map(|(name, bytes)| (name, crc32_hex(bytes)))
        .collect();
    serde_json::to_string(&map).expect("a map of strings always serialises")
}

/// Verifies the checksums of a parsed file against its metadata value.
///
/// `stored` is the value under [`METADATA_KEY`] (`None` for a file written before checksums
/// existed, which is accepted). On failure the error text says which tensor failed and what
/// was expected; callers wrap it with the file's path.
pub fn verify(st: &SafeTensors<'_>, stored: Option<&str>) -> Result<(), String> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let expected: BTreeMap<String, String> = serde_json::from_str(stored).map_err(|e| {
        format!("metadata `{METADATA_KEY}` is not a JSON object of tensor name -> CRC-32: {e}")
    })?;
    for name in st.names() {
        if !expected.contains_key(name) {
            return Err(format!(
                "tensor `{name}` has no checksum in `{METADATA_KEY}` (the file was edited?)"
            ));
        }
    }
    for (name, want) in &expected {
        let view = st.tensor(name).map_err(|e| {
            format!("`{METADATA_KEY}` lists tensor `{name}`, which the file lacks: {e}")
        })?;
        let got = crc32_hex(view.data());
        if &got != want {
            return Err(format!(
                "tensor `{name}` fails its checksum (CRC-32 {got}, expected {want}): the file is corrupt"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn file(data: &[u8]) -> Vec<u8> {
        let view = TensorView::new(Dtype::F32, vec![data.len() / 4], data).unwrap();
        safetensors::serialize(vec![("a", view)], None).unwrap()
    }

    #[test]
    fn known_value_and_flipped_byte() {
        // CRC-32 (IEEE) of "123456789" is the standard check value cbf43926.
        assert_eq!(crc32_hex(b"123456789"), "cbf43926");
        let data = [0u8, 0, 128, 63, 0, 0, 0, 64];
        let stored = metadata_value([("a", &data[..])]);
        let bytes = file(&data);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(verify(&st, Some(&stored)), Ok(()));
        assert_eq!(verify(&st, None), Ok(()));
        let mut bad = data;
        bad[3] ^= 1;
        let bytes = file(&bad);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let err = verify(&st, Some(&stored)).unwrap_err();
        assert!(err.contains("tensor `a` fails its checksum"), "{err}");
        assert!(verify(&st, Some("{}")).unwrap_err().contains("no checksum"));
        assert!(verify(&st, Some("[1]"))
            .unwrap_err()
            .contains("not a JSON object"));
    }
}
