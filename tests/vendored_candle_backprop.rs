//! The vendored candle-core patch (vendor/README.md): the first gradient reaching a node is
//! stored instead of being added to zeros. These check the cases the patch touches: a
//! single consumer, fan-in through `add`/`sub`, the rules that store a negated first
//! gradient, and that a gradient of the wrong shape is still an error. The second change
//! (a broadcast over no axis passes its gradient through) is checked next to real
//! broadcasts, whose gradients must still be summed.

use candle_core::{Device, Result, Tensor, Var};

fn grad_of(x: &Var, loss: &Tensor) -> Result<Vec<f64>> {
    let grads = loss.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => g.to_vec1::<f64>(),
        None => candle_core::bail!("no gradient for x"),
    }
}

#[test]
fn single_consumer_and_fan_in_gradients_are_exact() -> Result<()> {
    let x = Var::new(&[1.5f64, -2.0, 0.25], &Device::Cpu)?;
    let a = Tensor::new(&[2.0f64, 3.0, -1.0], &Device::Cpu)?;
    let b = Tensor::new(&[0.5f64, -4.0, 7.0], &Device::Cpu)?;
    // Single consumer: d/dx sum(x·a) = a.
    assert_eq!(
        grad_of(&x, &(x.as_tensor() * &a)?.sum_all()?)?,
        vec![2.0, 3.0, -1.0]
    );
    // x feeds three terms: d/dx sum(x·a + x·b − x) = a + b − 1.
    let y = ((x.as_tensor() * &a)? + (x.as_tensor() * &b)?)?;
    let y = (y - x.as_tensor())?;
    assert_eq!(grad_of(&x, &y.sum_all()?)?, vec![1.5, -2.0, 5.0]);
    Ok(())
}

#[test]
fn rules_that_subtract_store_the_negated_first_gradient() -> Result<()> {
    let x = Var::new(&[0.5f64, -1.0], &Device::Cpu)?;
    let c = Tensor::new(&[3.0f64, 4.0], &Device::Cpu)?;
    // Right-hand side of a subtraction, then a negation, each x's only consumer.
    assert_eq!(
        grad_of(&x, &(&c - x.as_tensor())?.sum_all()?)?,
        vec![-1.0, -1.0]
    );
    assert_eq!(
        grad_of(&x, &x.as_tensor().neg()?.sum_all()?)?,
        vec![-1.0, -1.0]
    );
    // tanh' = 1 − tanh²: the rule subtracts from the gradient sum.
    let g = grad_of(&x, &x.as_tensor().tanh()?.sum_all()?)?;
    for (g, x) in g.iter().zip([0.5f64, -1.0]) {
        assert!((g - (1.0 - x.tanh().powi(2))).abs() < 1e-15, "{g}");
    }
    Ok(())
}

#[test]
fn a_gradient_of_the_wrong_shape_is_still_an_error() -> Result<()> {
    // candle's strided conv2d backward returns a kernel gradient of the wrong shape on this
    // input (no_layers::ops::candle_fixes); before the patch `zeros + grad` rejected it.
    let x = Var::new(&[[[[0.1f64; 6]; 7]; 2]], &Device::Cpu)?;
    let w = Var::new(&[[[[0.2f64; 3]; 3]; 2]; 2], &Device::Cpu)?;
    let y = x.as_tensor().conv2d(w.as_tensor(), 1, 2, 1, 1)?;
    match y.sum_all()?.backward() {
        Err(e) => assert!(e.to_string().contains("shape mismatch"), "{e}"),
        Ok(grads) => {
            let gw = grads.get(w.as_tensor()).map(|g| g.dims().to_vec());
            assert_eq!(
                gw,
                Some(vec![2, 2, 3, 3]),
                "a wrong-shape gradient was stored"
            );
        }
    }
    Ok(())
}

#[test]
fn broadcasts_sum_their_gradients_and_equal_shapes_pass_them_through() -> Result<()> {
    let x = Var::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu)?;
    let row = Var::new(&[[10.0f64, 20.0]], &Device::Cpu)?;
    let w = Tensor::new(&[[1.0f64, -1.0], [0.5, 2.0]], &Device::Cpu)?;
    // Equal shapes recorded as a broadcast: d/dx sum(x ⊙ w) = w.
    let grads = x.as_tensor().broadcast_mul(&w)?.sum_all()?.backward()?;
    let gx = grads.get(x.as_tensor()).map(|g| g.to_vec2::<f64>());
    assert_eq!(gx.transpose()?, Some(vec![vec![1.0, -1.0], vec![0.5, 2.0]]));
    // A real broadcast over the rows: d/drow sum(row ⊙ w) = column sums of w.
    let grads = row.as_tensor().broadcast_mul(&w)?.sum_all()?.backward()?;
    let grow = grads.get(row.as_tensor()).map(|g| g.to_vec2::<f64>());
    assert_eq!(grow.transpose()?, Some(vec![vec![1.5, 1.0]]));
    // Same-rank broadcast_matmul: d/dx sum(x·w) = 1·wᵀ.
    let grads = x.as_tensor().broadcast_matmul(&w)?.sum_all()?.backward()?;
    let gx = grads.get(x.as_tensor()).map(|g| g.to_vec2::<f64>());
    assert_eq!(gx.transpose()?, Some(vec![vec![0.0, 2.5], vec![0.0, 2.5]]));
    // A weight shared over a leading batch axis (the sum taken as 1ᵀ·G): d/dw sum(w ⊙ x_b)
    // summed over the batch = Σ_b x_b.
    let batch = Tensor::new(
        &[
            [[1.0f64, 2.0], [3.0, 4.0]],
            [[0.5, -1.0], [2.0, 0.0]],
            [[-3.0, 1.0], [1.0, 10.0]],
        ],
        &Device::Cpu,
    )?;
    let grads = x.as_tensor().broadcast_mul(&batch)?.sum_all()?.backward()?;
    let gx = grads.get(x.as_tensor()).map(|g| g.to_vec2::<f64>());
    assert_eq!(
        gx.transpose()?,
        Some(vec![vec![-1.5, 2.0], vec![6.0, 14.0]])
    );
    // Leading and inner axes together still take candle's reduction.
    let col = Var::new(&[[[1.0f64], [2.0]]], &Device::Cpu)?;
    let grads = col
        .as_tensor()
        .broadcast_mul(&batch)?
        .sum_all()?
        .backward()?;
    let gc = grads
        .get(col.as_tensor())
        .map(|g| g.flatten_all()?.to_vec1::<f64>());
    assert_eq!(gc.transpose()?, Some(vec![0.5, 20.0]));
    Ok(())
}
