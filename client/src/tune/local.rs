//! The second stage of BBT-RGB's two-stage search (Sun et al., LREC-COLING 2024): after CMA-ES,
//! COBYLA (the `cobyla` crate, a pure-Rust port of NLopt's) refines the best `z` CMA-ES found,
//! one candidate per API call.
//!
//! COBYLA drives its objective through a callback, so a run cannot be paused and saved inside
//! it. It is deterministic, though: every loss it received is kept in the checkpoint, and a
//! resumed run starts COBYLA again from the same point, answering the calls it has already paid
//! for from that list; it then asks for exactly the candidates it would have asked for.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

/// The local search's state: enough to replay it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSearch {
    /// Where COBYLA starts: CMA-ES's best `z` on the training loss.
    pub start: Vec<f64>,
    /// COBYLA's initial trust-region radius in `z`.
    pub radius: f64,
    /// Box bound `|z_i| <= bound`, none if absent.
    pub bound: Option<f64>,
    /// Candidates it may evaluate in all.
    pub max_evals: usize,
    /// Every training loss it has received, in order.
    pub losses: Vec<f64>,
    /// The lowest training loss so far and its `z`.
    pub best: Option<(Vec<f64>, f64)>,
}

/// COBYLA's objective: answers from the recorded losses first, then from `evaluate`.
struct Replay<'a, E, A> {
    /// Index of the next call.
    next: usize,
    error: Option<anyhow::Error>,
    search: &'a mut LocalSearch,
    evaluate: &'a mut E,
    after_each: &'a mut A,
}

impl<E, A> Replay<'_, E, A>
where
    E: FnMut(&[f64]) -> anyhow::Result<f64>,
    A: FnMut(&LocalSearch) -> anyhow::Result<()>,
{
    fn loss(&mut self, z: &[f64]) -> anyhow::Result<f64> {
        let index = self.next;
        self.next += 1;
        if let Some(&loss) = self.search.losses.get(index) {
            return Ok(loss);
        }
        let loss = (self.evaluate)(z)?;
        self.search.record(z, loss);
        (self.after_each)(self.search)?;
        Ok(loss)
    }
}

/// Raised through COBYLA's callback to stop it when a call fails (the crate has no stop hook).
struct Stop;

impl LocalSearch {
    /// A search of `max_evals` candidates from `start`.
    pub fn new(start: Vec<f64>, radius: f64, bound: Option<f64>, max_evals: usize) -> Self {
        Self {
            start,
            radius,
            bound,
            max_evals,
            losses: Vec::new(),
            best: None,
        }
    }

    /// Whether every candidate has been evaluated.
    pub fn done(&self) -> bool {
        self.losses.len() >= self.max_evals
    }

    /// Runs COBYLA to the end of its budget. Candidates already evaluated are answered from
    /// [`Self::losses`]; each new one goes to `evaluate`, whose loss is recorded before
    /// `after_each` runs (e.g. to save a checkpoint). The first error from either stops the
    /// search and is returned; the losses received so far stay recorded.
    pub fn run(
        &mut self,
        mut evaluate: impl FnMut(&[f64]) -> anyhow::Result<f64>,
        mut after_each: impl FnMut(&LocalSearch) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.done() {
            return Ok(());
        }
        let start = self.start.clone();
        let bounds = vec![
            self.bound
                .map_or((-f64::INFINITY, f64::INFINITY), |b| (-b, b));
            start.len()
        ];
        let (radius, max_evals) = (self.radius, self.max_evals);
        // COBYLA wants a `Fn`: the mutable parts live in one cell, borrowed once per call.
        let cell = RefCell::new(Replay {
            next: 0,
            error: None,
            search: self,
            evaluate: &mut evaluate,
            after_each: &mut after_each,
        });
        let objective = |z: &[f64], _: &mut ()| -> f64 {
            let mut replay = cell.borrow_mut();
            match replay.loss(z) {
                Ok(loss) => loss,
                Err(e) => {
                    replay.error = Some(e);
                    drop(replay);
                    // Unwinds out of COBYLA without the panic hook's message; caught below.
                    panic::resume_unwind(Box::new(Stop))
                }
            }
        };
        let no_constraints: &[fn(&[f64], &mut ()) -> f64] = &[];
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            cobyla::minimize(
                objective,
                &start,
                &bounds,
                no_constraints,
                (),
                max_evals,
                cobyla::RhoBeg::All(radius),
                None,
            )
        }));
        match outcome {
            Ok(_) => Ok(()),
            Err(payload) if payload.is::<Stop>() => Err(cell
                .into_inner()
                .error
                .unwrap_or_else(|| anyhow::anyhow!("the local search stopped"))),
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    fn record(&mut self, z: &[f64], loss: f64) {
        self.losses.push(loss);
        if self.best.as_ref().is_none_or(|(_, b)| loss < *b) {
            self.best = Some((z.to_vec(), loss));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sphere(z: &[f64]) -> f64 {
        z.iter().map(|v| (v - 0.5) * (v - 0.5)).sum()
    }

    #[test]
    fn cobyla_descends_from_its_start() {
        let mut search = LocalSearch::new(vec![0.0; 5], 0.2, None, 120);
        search.run(|z| Ok(sphere(z)), |_| Ok(())).unwrap();
        assert_eq!(search.losses.len(), 120);
        let (_, best) = search.best.clone().unwrap();
        assert!(best < 0.01 * sphere(&[0.0; 5]), "best {best}");
    }

    #[test]
    fn an_interrupted_search_resumes_exactly() {
        let mut whole = LocalSearch::new(vec![0.3, -0.2, 0.1], 0.2, Some(1.0), 40);
        whole.run(|z| Ok(sphere(z)), |_| Ok(())).unwrap();

        // The same search, failing at its 17th call, then resumed from its saved state.
        let mut part = LocalSearch::new(vec![0.3, -0.2, 0.1], 0.2, Some(1.0), 40);
        let mut calls = 0;
        let err = part
            .run(
                |z| {
                    calls += 1;
                    anyhow::ensure!(calls < 17, "server gone");
                    Ok(sphere(z))
                },
                |_| Ok(()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("server gone"));
        assert_eq!(part.losses.len(), 16);
        let saved: LocalSearch =
            serde_json::from_str(&serde_json::to_string(&part).unwrap()).unwrap();
        let mut resumed = saved;
        let mut new_calls = 0;
        resumed
            .run(
                |z| {
                    new_calls += 1;
                    Ok(sphere(z))
                },
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(new_calls, 24, "only the calls not yet paid for are made");
        assert_eq!(resumed.losses, whole.losses);
        assert_eq!(resumed.best, whole.best);
    }

    #[test]
    fn a_failing_save_stops_the_search_with_its_error() {
        let mut search = LocalSearch::new(vec![0.0; 2], 0.2, None, 10);
        let err = search
            .run(
                |z| Ok(sphere(z)),
                |s| {
                    anyhow::ensure!(s.losses.len() < 3, "disk full");
                    Ok(())
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(
            search.losses.len(),
            3,
            "the loss is recorded before the save runs"
        );
    }
}
