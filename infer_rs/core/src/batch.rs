//! Row-major f32 batches in and out, checked at the door.

use crate::error::{InferError, Result};
use crate::limits::MAX_BATCH;

/// A (rows, cols) row-major f32 matrix: the engine's input and output type.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// The number of rows.
    pub rows: usize,
    /// The number of values in a row.
    pub cols: usize,
    /// rows * cols values, row after row.
    pub data: Vec<f32>,
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
    /// The values, row after row.
    pub data: &'a [f32],
    /// The number of values in a row.
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

/// Many inputs, one pass: each input is checked on its own, the valid ones are stacked
/// and run through `forward` once, and the output rows are split back per input.
/// An invalid input keeps its own error; the others are unaffected.
pub fn run_stacked(
    what: &'static str,
    inputs: &[Rows],
    width: usize,
    out_width: usize,
    forward: impl FnOnce(&[f32], usize) -> Vec<f32>,
) -> Vec<Result<Matrix>> {
    let counts: Vec<Result<usize>> = inputs
        .iter()
        .map(|input| check_rows(what, *input, width))
        .collect();
    let mut stacked = Vec::new();
    for (input, count) in inputs.iter().zip(&counts) {
        if count.is_ok() {
            stacked.extend_from_slice(input.data);
        }
    }
    let total = stacked.len() / width;
    let output = if total == 0 {
        Vec::new()
    } else {
        forward(&stacked, total)
    };
    let mut offset = 0;
    counts
        .into_iter()
        .map(|count| {
            count.map(|rows| {
                let data = output[offset * out_width..(offset + rows) * out_width].to_vec();
                offset += rows;
                Matrix {
                    rows,
                    cols: out_width,
                    data,
                }
            })
        })
        .collect()
}

/// Rows owned by the caller: the values and the width of a row.
pub type OwnedRows = (Vec<f32>, usize);

/// Run `batch` on the inputs that were prepared, and put the others' errors back in
/// place: one result per input, in order.
pub fn merge_errors(
    inputs: Vec<Result<OwnedRows>>,
    batch: impl FnOnce(&[Rows]) -> Vec<Result<Matrix>>,
) -> Vec<Result<Matrix>> {
    let outputs = {
        let prepared: Vec<Rows> = inputs
            .iter()
            .flatten()
            .map(|(data, width)| Rows {
                data,
                width: *width,
            })
            .collect();
        batch(&prepared)
    };
    let mut outputs = outputs.into_iter();
    inputs
        .into_iter()
        .map(|input| match input {
            Ok(_) => outputs.next().unwrap_or_else(|| {
                Err(InferError::InvalidArgument(
                    "a batch output is missing".into(),
                ))
            }),
            Err(e) => Err(e),
        })
        .collect()
}
