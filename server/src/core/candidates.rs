//! Decoding candidates `z` from the wire and checking them (count, length, finiteness).

use base64::Engine as _;
use bbt::protocol::{Candidates, FloatType};

use super::CoreError;

/// Candidates as they arrived: in a JSON body, or as a raw `application/octet-stream` body of
/// little-endian floats (the smallest upload: 4 or 2 bytes per number, no encoding overhead).
pub enum CandidatesIn {
    Json(Candidates),
    Raw { dtype: FloatType, bytes: Vec<u8> },
}

/// Little-endian floats of `dtype` as rows of `d`; `count`, when the client stated it, must match.
fn rows_from_le(
    bytes: &[u8],
    dtype: FloatType,
    count: Option<usize>,
    d: usize,
) -> Result<Vec<Vec<f32>>, CoreError> {
    let width = match dtype {
        FloatType::F32 => 4,
        FloatType::F16 => 2,
    };
    let per_candidate = d.saturating_mul(width).max(1);
    let Some(count) = count else {
        // A raw body states no count: it must be whole candidates.
        if bytes.is_empty() || bytes.len() % per_candidate != 0 {
            return Err(CoreError::Invalid(format!(
                "a raw body holds whole candidates of d = {d} {dtype:?} numbers, {per_candidate} \
                 bytes each; {} bytes are {}",
                bytes.len(),
                if bytes.is_empty() {
                    "no candidate".to_string()
                } else {
                    format!(
                        "{:.2} candidates",
                        bytes.len() as f64 / per_candidate as f64
                    )
                }
            )));
        }
        return rows_from_le(bytes, dtype, Some(bytes.len() / per_candidate), d);
    };
    // `count` may come from the client: checked, so a huge one is a 422, never an overflow.
    let needed = count.checked_mul(per_candidate);
    if needed != Some(bytes.len()) {
        return Err(CoreError::Invalid(format!(
            "the candidates hold {} bytes; {count} candidate(s) of d = {d} {dtype:?} need {}",
            bytes.len(),
            needed.map_or_else(
                || "more than this machine can address".into(),
                |n| n.to_string()
            )
        )));
    }
    let values: Vec<f32> = match dtype {
        FloatType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        FloatType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    Ok(values.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
}

/// Candidates as rows of `d` finite numbers, at most `max`.
pub fn decode_candidates(
    c: &CandidatesIn,
    d: usize,
    max: usize,
) -> Result<Vec<Vec<f32>>, CoreError> {
    let rows: Vec<Vec<f32>> = match c {
        CandidatesIn::Json(Candidates::Json(rows)) => rows.clone(),
        CandidatesIn::Json(Candidates::Packed { dtype, count, data }) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| {
                    CoreError::BadRequest(format!("candidates.data is not valid base64: {e}"))
                })?;
            rows_from_le(&bytes, *dtype, Some(*count), d)?
        }
        CandidatesIn::Raw { dtype, bytes } => rows_from_le(bytes, *dtype, None, d)?,
    };
    if rows.is_empty() {
        return Err(CoreError::Invalid("no candidates".into()));
    }
    if rows.len() > max {
        return Err(CoreError::TooLarge(format!(
            "{} candidates; this server's limit is {max} per call",
            rows.len()
        )));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.len() != d {
            return Err(CoreError::Invalid(format!(
                "candidate {i} has {} numbers; the session's d is {d}",
                r.len()
            )));
        }
        if r.iter().any(|x| !x.is_finite()) {
            return Err(CoreError::Invalid(format!(
                "candidate {i} contains NaN or infinite values"
            )));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_body_of_part_of_a_candidate_says_so() {
        let raw = |n: usize| CandidatesIn::Raw {
            dtype: FloatType::F32,
            bytes: vec![0; n],
        };
        let e = decode_candidates(&raw(7), 6, 8).unwrap_err().to_string();
        assert!(
            e.contains(
                "whole candidates of d = 6 F32 numbers, 24 bytes each; 7 bytes are 0.29 candidates"
            ),
            "{e}"
        );
        let e = decode_candidates(&raw(0), 6, 8).unwrap_err().to_string();
        assert!(e.contains("0 bytes are no candidate"), "{e}");
        assert_eq!(decode_candidates(&raw(48), 6, 8).unwrap().len(), 2);
    }
}
