//! Row-major f32 batches in and out, checked at the door.

use crate::error::{InferError, Result};
use crate::limits::MAX_BATCH;
use candle_core::Tensor;

/// A (rows, cols) row-major f32 matrix: the engine's input and output type.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        Ok(Self {
            rows,
            cols,
            data: t.flatten_all()?.to_vec1()?,
        })
    }
}

/// Check a batch size against 1..=MAX_BATCH.
pub fn check_count(what: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(InferError::InvalidArgument(format!(
            "{what} must be at least 1"
        )));
    }
    if n > MAX_BATCH {
        return Err(InferError::TooLarge {
            what,
            value: n,
            limit: MAX_BATCH,
        });
    }
    Ok(())
}

/// A row-major input: `data` holds rows of `width` values.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub width: usize,
}

/// The row count of `input`, refusing a width other than `width`, a bad row count or
/// a non-finite value.
pub fn check_rows(what: &'static str, input: Rows, width: usize) -> Result<usize> {
    let data = input.data;
    if input.width != width {
        return Err(InferError::InvalidArgument(format!(
            "{what} has rows of width {}, the model takes width {width}",
            input.width
        )));
    }
    if data.is_empty() || !data.len().is_multiple_of(width) {
        return Err(InferError::InvalidArgument(format!(
            "{what} must hold rows of width {width}, got {} values",
            data.len()
        )));
    }
    let rows = data.len() / width;
    check_count(what, rows)?;
    if let Some(at) = data.iter().position(|v| !v.is_finite()) {
        return Err(InferError::InvalidArgument(format!(
            "{what}[{}][{}] is {}, not a finite number",
            at / width,
            at % width,
            data[at]
        )));
    }
    Ok(rows)
}
