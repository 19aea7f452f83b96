//! Versioned binary encoding of a [`KeyState`], for checkpoints and the
//! wire (`ParamUpdate.state`).
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `PSTS` |
//! | 2 | format version (`FORMAT_VERSION`) |
//! | 1 | model: 1 Beta, 2 diagonal Gaussian, 3 full Gaussian |
//! | 1 | reserved, 0 |
//! | 8 | seq (u64) |
//! | 8 | sample_count (f64) |
//! | 8 | updated_event_time_ms (i64) |
//! | … | Beta: α, β (f64). Gaussian: d (u32), mean (d × f64), then the diagonal precisions (d × f64) or the packed lower triangle of Q by rows (d(d+1)/2 × f64) |
//!
//! Floats are stored bit for bit, so decode(encode(s)) == s exactly.
//! Decoding checks everything: length, finiteness, positivity, positive
//! definiteness. A newer format version is refused, never guessed at.

use ndarray::Array2;

use super::logistic::MAX_DIM_DIAGONAL;
use super::{BetaPosterior, DiagonalGaussian, FullGaussian, KeyState, Posterior, PosteriorError};

/// Current format version of the state encoding.
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"PSTS";
const HEADER_BYTES: usize = 4 + 2 + 1 + 1 + 8 + 8 + 8;

/// Why bytes could not be decoded into a state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not start with the magic number.
    #[error("not a Posterior key state (bad magic)")]
    BadMagic,
    /// Written by a newer (or unknown) format version.
    #[error("unsupported state format version {0} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// Unknown model tag.
    #[error("unknown model tag {0}")]
    UnknownModel(u8),
    /// Too few or too many bytes for the declared contents.
    #[error("state has {got} bytes, expected {expected}")]
    Length {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// The decoded parameters are not a valid posterior.
    #[error("invalid state: {0}")]
    Invalid(#[from] PosteriorError),
}

impl KeyState {
    /// Encodes the state in the current format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends [`KeyState::encode`]'s bytes to `out` (a writer encoding
    /// many states reuses one buffer).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let tag: u8 = match self.posterior {
            Posterior::Beta(_) => 1,
            Posterior::Diagonal(_) => 2,
            Posterior::Full(_) => 3,
        };
        out.extend_from_slice(&[tag, 0]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sample_count.to_le_bytes());
        out.extend_from_slice(&self.updated_event_time_ms.to_le_bytes());
        let mut put = |v: f64| out.extend_from_slice(&v.to_le_bytes());
        match &self.posterior {
            Posterior::Beta(b) => {
                put(b.alpha());
                put(b.beta());
            }
            Posterior::Diagonal(g) => {
                out.extend_from_slice(&(g.dim() as u32).to_le_bytes());
                g.mean()
                    .iter()
                    .chain(g.precision())
                    .for_each(|&v| out.extend_from_slice(&v.to_le_bytes()));
            }
            Posterior::Full(g) => {
                out.extend_from_slice(&(g.dim() as u32).to_le_bytes());
                g.mean()
                    .iter()
                    .for_each(|&v| out.extend_from_slice(&v.to_le_bytes()));
                let q = g.precision();
                for i in 0..g.dim() {
                    for j in 0..=i {
                        out.extend_from_slice(&q[(i, j)].to_le_bytes());
                    }
                }
            }
        }
    }

    /// Bytes [`KeyState::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + match &self.posterior {
                Posterior::Beta(_) => 16,
                Posterior::Diagonal(g) => 4 + 16 * g.dim(),
                Posterior::Full(g) => 4 + 8 * (g.dim() + g.dim() * (g.dim() + 1) / 2),
            }
    }

    /// Decodes and validates a state.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError::Length {
                expected: HEADER_BYTES,
                got: bytes.len(),
            });
        }
        if &bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let tag = bytes[6];
        let mut reader = Reader { bytes, pos: 8 };
        let seq = reader.u64();
        let sample_count = reader.f64();
        let updated_event_time_ms = reader.u64() as i64;
        if !sample_count.is_finite() || sample_count < 0.0 {
            return Err(PosteriorError::OutOfRange {
                field: "sample_count",
                value: sample_count,
                reason: "must be finite and >= 0",
            }
            .into());
        }
        let posterior = match tag {
            1 => {
                reader.expect_remaining(16)?;
                Posterior::Beta(BetaPosterior::from_parts(reader.f64(), reader.f64())?)
            }
            2 | 3 => {
                reader.expect_at_least(4)?;
                let d = reader.u32() as usize;
                if d == 0 || d > MAX_DIM_DIAGONAL {
                    return Err(PosteriorError::OutOfRange {
                        field: "dim",
                        value: d as f64,
                        reason: "must be in 1..=4096",
                    }
                    .into());
                }
                let tail = if tag == 2 { d } else { d * (d + 1) / 2 };
                reader.expect_remaining(8 * (d + tail))?;
                let mean = reader.f64s(d);
                let rest = reader.f64s(tail);
                if tag == 2 {
                    Posterior::Diagonal(DiagonalGaussian::from_parts(mean, rest)?)
                } else {
                    Posterior::Full(Box::new(FullGaussian::from_parts(
                        mean,
                        unpack_lower(d, &rest),
                    )?))
                }
            }
            other => return Err(DecodeError::UnknownModel(other)),
        };
        Ok(Self {
            seq,
            sample_count,
            updated_event_time_ms,
            posterior,
        })
    }
}

fn unpack_lower(d: usize, packed: &[f64]) -> Array2<f64> {
    let mut q = Array2::zeros((d, d));
    let mut k = 0;
    for i in 0..d {
        for j in 0..=i {
            q[(i, j)] = packed[k];
            q[(j, i)] = packed[k];
            k += 1;
        }
    }
    q
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let out: [u8; N] = self.bytes[self.pos..self.pos + N]
            .try_into()
            .expect("length checked before reading");
        self.pos += N;
        out
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take())
    }
    fn f64s(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.f64()).collect()
    }
    fn expect_remaining(&self, n: usize) -> Result<(), DecodeError> {
        let got = self.bytes.len() - self.pos;
        if got != n {
            return Err(DecodeError::Length {
                expected: self.pos + n,
                got: self.bytes.len(),
            });
        }
        Ok(())
    }
    fn expect_at_least(&self, n: usize) -> Result<(), DecodeError> {
        if self.bytes.len() - self.pos < n {
            return Err(DecodeError::Length {
                expected: self.pos + n,
                got: self.bytes.len(),
            });
        }
        Ok(())
    }
}
