//! The machine a job ran on, as one line for its record and the report: CPU timings and
//! training times mean little without it.
//!
//! On Linux the line comes from `/proc/cpuinfo`, in the format the comparison scripts of
//! `benches/python/` print, so a job's record and a side-by-side timing name a CPU the same
//! way: `Intel(R) Xeon(R) Processor (GenuineIntel, family 6 model 207); avx2 yes, fma yes,
//! avx512f yes; 2 logical CPUs`. Elsewhere it names the architecture and the CPU count only.
//!
//! ```
//! let line = no_eval::host::cpu_description();
//! assert!(line.contains("logical CPU"));
//! ```

use std::collections::HashMap;

/// The vector extensions the line reports, in this order.
const EXTENSIONS: [&str; 3] = ["avx2", "fma", "avx512f"];

/// This machine's CPU: model name, vendor, family and model, the vector extensions that
/// decide the kernels' speed, and the logical CPUs this process may use.
pub fn cpu_description() -> String {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = format!(
        "{logical} logical CPU{}",
        if logical == 1 { "" } else { "s" }
    );
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => describe_cpuinfo(&text, &cpus),
        Err(_) => format!("{} CPU; {cpus}", std::env::consts::ARCH),
    }
}

/// The line for the first processor of a `/proc/cpuinfo` text; `cpus` ends it.
fn describe_cpuinfo(text: &str, cpus: &str) -> String {
    let mut info: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        // Only the first processor's block: later ones repeat it.
        info.entry(key.trim()).or_insert_with(|| value.trim());
    }
    let name = info
        .get("model name")
        .copied()
        .unwrap_or(std::env::consts::ARCH);
    let Some(vendor) = info.get("vendor_id") else {
        // Not an x86 cpuinfo (ARM lists no vendor_id, family or flags of this kind).
        return format!("{name}; {cpus}");
    };
    let family = info.get("cpu family").copied().unwrap_or("?");
    let model = info.get("model").copied().unwrap_or("?");
    let flags: Vec<&str> = info
        .get("flags")
        .map_or_else(Vec::new, |f| f.split_whitespace().collect());
    let extensions: Vec<String> = EXTENSIONS
        .iter()
        .map(|e| format!("{e} {}", if flags.contains(e) { "yes" } else { "no" }))
        .collect();
    format!(
        "{name} ({vendor}, family {family} model {model}); {}; {cpus}",
        extensions.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_x86_cpuinfo_gives_name_vendor_family_and_extensions() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n\
                    model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse avx2 fma avx512f\n\n\
                    processor\t: 1\nvendor_id\t: Other\nmodel name\t: Not this one\n";
        assert_eq!(
            describe_cpuinfo(text, "2 logical CPUs"),
            "Intel(R) Xeon(R) Processor (GenuineIntel, family 6 model 207); avx2 yes, fma yes, \
             avx512f yes; 2 logical CPUs"
        );
    }

    #[test]
    fn missing_extensions_say_no_and_a_non_x86_cpuinfo_gives_its_name() {
        let amd =
            "vendor_id : AuthenticAMD\ncpu family : 25\nmodel : 1\nmodel name : AMD EPYC 7B13\n\
                   flags : fpu avx2 fma\n";
        assert_eq!(
            describe_cpuinfo(amd, "1 logical CPU"),
            "AMD EPYC 7B13 (AuthenticAMD, family 25 model 1); avx2 yes, fma yes, avx512f no; \
             1 logical CPU"
        );
        let arm = "processor : 0\nBogoMIPS : 50.00\nFeatures : fp asimd\n";
        let line = describe_cpuinfo(arm, "4 logical CPUs");
        assert!(line.ends_with("; 4 logical CPUs"), "{line}");
    }
}
