//! A decoder's weight matrix: Q4_1 through this crate's vectorized product (`q4_1`), every
//! other GGUF type through candle's.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::q4_1::Q4_1Matrix;
use crate::Result;

pub enum Linear {
    Q4_1(Q4_1Matrix),
    Candle(QMatMul),
}

impl Linear {
    /// Takes a `(out, in)` weight tensor.
    pub fn new(weights: QTensor) -> Result<Self> {
        Self::shared(Arc::new(weights))
    }

    /// Takes a `(out, in)` weight tensor that is also used elsewhere (tied embeddings).
    pub fn shared(weights: Arc<QTensor>) -> Result<Self> {
        if weights.dtype() == GgmlDType::Q4_1 {
            let (rows, cols) = weights.shape().dims2()?;
            Ok(Self::Q4_1(Q4_1Matrix::from_bytes(
                &weights.data()?,
                rows,
                cols,
            )?))
        } else {
            Ok(Self::Candle(QMatMul::from_arc(weights)?))
        }
    }

    /// `x` (`(tokens, in)`) times the transposed weights: `(tokens, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(matmul) => Ok(matmul.forward(x)?),
            Self::Q4_1(matrix) => {
                let (tokens, _) = x.dims2()?;
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let out = matrix.matmul(&values, tokens);
                Ok(Tensor::from_vec(out, (tokens, matrix.rows), x.device())?)
            }
        }
    }
}
