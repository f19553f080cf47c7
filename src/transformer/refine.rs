//! Refinement after MaskGIT decoding: the tokens the finished grid makes least likely are
//! predicted again.
//!
//! MaskGIT never revisits a token it kept: one drawn early, when little of the grid was known,
//! stays even where the finished grid makes it unlikely (on the quickstart's shapes, an edge
//! token that rounds a square's corner). A refinement round
//!
//! 1. scores each decoded token by its log-probability given the others, half the grid at a
//!    time: the positions of one colour of a checkerboard are masked and predicted from the
//!    other colour's (two passes; every channel of a position shares its colour);
//! 2. masks the `k` lowest-scoring decoded tokens of each row;
//! 3. puts back the model's most likely code for each of them, given all the rest (one pass).
//!
//! Tokens known before decoding (masked reconstruction, editing) are never masked or changed,
//! and stay visible in every pass. Every pass is guided at the decoding's final scale. A round
//! draws nothing at random, so refinement adds no randomness to a seeded run.

use candle_core::{DType, Result, Tensor, D};

use crate::ops::token_choice::{choose_tokens, TokenChoice};
use crate::transformer::maskgit::lowest_ranked;
use crate::transformer::model::MaskTransformer;

/// How many rounds of refinement, and how many tokens each re-predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refinement {
    /// Rounds after decoding (0: none).
    pub rounds: usize,
    /// The share of a row's decoded tokens re-predicted in each round.
    pub fraction: f64,
}

impl Refinement {
    /// No refinement.
    pub const NONE: Refinement = Refinement {
        rounds: 0,
        fraction: 0.1,
    };

    /// Tokens re-predicted per round in a row with `decoded` decoded tokens: ⌈fraction·decoded⌉,
    /// at least 1 (none when nothing was decoded).
    pub fn per_round(&self, decoded: usize) -> usize {
        if decoded == 0 {
            return 0;
        }
        (((self.fraction * decoded as f64) - 1e-9).ceil() as usize).clamp(1, decoded)
    }
}

/// The checkerboard colour of each token of `model`'s layout: 1 where row + column is odd.
fn checkerboard(model: &MaskTransformer) -> Vec<u8> {
    let layout = model.layout();
    (0..layout.seq_len())
        .map(|i| {
            let p = i / layout.channels;
            ((p / layout.w + p % layout.w) % 2) as u8
        })
        .collect()
}

/// Each token's log-probability under `model` given the tokens of the other checkerboard
/// colour and every token `decoded` (u8 `[B, L]`) marks as not decoded: f32 `[B, L]`.
pub fn pseudo_log_likelihood(
    model: &MaskTransformer,
    tokens: &Tensor,
    decoded: &Tensor,
    cond: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, l) = tokens.dims2()?;
    let device = tokens.device();
    let odd = Tensor::from_vec(checkerboard(model), (1, l), device)?.broadcast_as((b, l))?;
    let mask_tok = Tensor::full(model.layout().mask_id(), (b, l), device)?;
    // the log-probabilities of every token with the decoded ones of one colour hidden
    let with_hidden = |colour: &Tensor| -> Result<Tensor> {
        let input = (colour * decoded)?.where_cond(&mask_tok, tokens)?;
        let logits = model
            .sampling_logits(&input, cond, scale)?
            .to_dtype(DType::F32)?;
        candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .gather(&tokens.unsqueeze(2)?.contiguous()?, 2)?
            .squeeze(2)
    };
    let even = with_hidden(&odd.eq(0u8)?)?;
    let odd_scores = with_hidden(&odd)?;
    odd.where_cond(&odd_scores, &even)
}

/// The tokens each row re-predicts in one round: its `per_row[b]` decoded tokens (u8 `decoded`
/// `[B, L]`) of the lowest `score`, as a u8 `[B, L]` mask.
pub fn lowest(score: &Tensor, decoded: &Tensor, per_row: &[usize]) -> Result<Tensor> {
    let (b, l) = score.dims2()?;
    let device = score.device();
    let inf = Tensor::full(f32::INFINITY, (b, l), device)?;
    let score = decoded.where_cond(score, &inf)?;
    let chosen = lowest_ranked(&score, per_row)?;
    chosen * decoded
}

/// Runs `refinement`'s rounds on `tokens` `[B, L]` (no `[MASK]` left), of which `decoded`
/// (u8 `[B, L]`) marks those the decoding drew; guided at `scale`. `model` is the sampler's
/// ([`MaskTransformer::for_inference`]).
pub fn refine(
    model: &MaskTransformer,
    mut tokens: Tensor,
    decoded: &Tensor,
    cond: &Tensor,
    scale: f64,
    refinement: &Refinement,
) -> Result<Tensor> {
    if refinement.rounds == 0 {
        return Ok(tokens);
    }
    let (b, l) = tokens.dims2()?;
    let counts: Vec<usize> = decoded
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|n| refinement.per_round(n as usize))
        .collect();
    let mask_id = model.layout().mask_id();
    let mask_tok = Tensor::full(mask_id, (b, l), tokens.device())?;
    let argmax = TokenChoice {
        mask: mask_id,
        inv_temp: 1.0,
        top1: true,
        min_p: 0.0,
        noise: 0.0,
        seed: 0,
    };
    for _ in 0..refinement.rounds {
        let score = pseudo_log_likelihood(model, &tokens, decoded, cond, scale)?;
        let again = lowest(&score, decoded, &counts)?;
        let masked = again.where_cond(&mask_tok, &tokens)?;
        let logits = model.sampling_logits(&masked, cond, scale)?;
        tokens = choose_tokens(&logits, &masked, &argmax)?.0;
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_re_predicts_a_tenth_rounded_up() {
        let r = Refinement {
            rounds: 1,
            fraction: 0.1,
        };
        assert_eq!(r.per_round(36), 4);
        assert_eq!(r.per_round(30), 3);
        assert_eq!(r.per_round(5), 1);
        assert_eq!(r.per_round(0), 0);
        let all = Refinement {
            rounds: 1,
            fraction: 1.0,
        };
        assert_eq!(all.per_round(7), 7);
    }
}
