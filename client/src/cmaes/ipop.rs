//! IPOP-CMA-ES (Auger & Hansen 2005): restart from `x0` with a larger population whenever a run
//! stops for any reason but the budget or the target.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{Best, CmaError, CmaEs, CmaOptions, StopReason, StrategyParams};

/// CMA-ES with up to `options.restarts` IPOP restarts; with 0 restarts, a plain run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ipop {
    x0: Vec<f64>,
    sigma0: f64,
    options: CmaOptions,
    run: CmaEs,
    restarts_done: u32,
    /// Evaluations of the finished runs.
    evals_before: u64,
    best: Option<Best>,
    stop: Option<StopReason>,
}

impl Ipop {
    /// Starts the first run.
    pub fn new(x0: &[f64], sigma0: f64, options: CmaOptions) -> Result<Self, CmaError> {
        let run = CmaEs::new(x0, sigma0, options.clone())?;
        Ok(Self {
            x0: x0.to_vec(),
            sigma0,
            options,
            run,
            restarts_done: 0,
            evals_before: 0,
            best: None,
            stop: None,
        })
    }

    /// The current run's next population.
    pub fn ask(&mut self) -> Result<Array2<f64>, CmaError> {
        if let Some(reason) = self.stop {
            return Err(CmaError::Stopped(reason));
        }
        self.run.ask()
    }

    /// Tells the current run; on its stop, restarts with a larger population if allowed.
    /// Returns the final stop reason once no run remains.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<Option<StopReason>, CmaError> {
        let stopped = self.run.tell(fitness)?;
        if let Some(b) = &self.run.best {
            if self.best.as_ref().is_none_or(|o| b.fitness < o.fitness) {
                self.best = Some(Best {
                    evals: self.evals_before + b.evals,
                    ..b.clone()
                });
            }
        }
        let Some(reason) = stopped else {
            return Ok(None);
        };
        if !reason.allows_restart() || self.restarts_done >= self.options.restarts {
            self.stop = Some(reason);
            return Ok(self.stop);
        }
        self.evals_before += self.run.evals();
        self.restarts_done += 1;
        let dim = self.x0.len();
        let popsize = self.run.params().popsize as f64 * self.options.incpopsize;
        let options = CmaOptions {
            popsize: Some((popsize.round() as usize).max(StrategyParams::default_popsize(dim))),
            seed: self.options.seed.wrapping_add(self.restarts_done as u64),
            max_evals: self.options.max_evals.map(|m| m - self.evals_before.min(m)),
            ..self.options.clone()
        };
        if options.max_evals == Some(0) {
            self.stop = Some(StopReason::MaxEvals);
            return Ok(self.stop);
        }
        self.run = CmaEs::new(&self.x0, self.sigma0, options)?;
        Ok(None)
    }

    /// The best candidate over all runs and the evaluations when it was found.
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// Evaluations over all runs.
    pub fn evals(&self) -> u64 {
        self.evals_before + self.run.evals()
    }

    /// Restarts made so far.
    pub fn restarts(&self) -> u32 {
        self.restarts_done
    }

    /// The run in progress (or the last one).
    pub fn current(&self) -> &CmaEs {
        &self.run
    }

    /// Why the whole search stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }
}

/// Minimises `f` with IPOP-CMA-ES until a stop; returns the search (its best, evaluations).
pub fn minimize(
    mut f: impl FnMut(ndarray::ArrayView1<f64>) -> f64,
    x0: &[f64],
    sigma0: f64,
    options: CmaOptions,
) -> Result<Ipop, CmaError> {
    let mut es = Ipop::new(x0, sigma0, options)?;
    while es.stop_reason().is_none() {
        let xs = es.ask()?;
        let fs: Vec<f64> = xs.outer_iter().map(&mut f).collect();
        es.tell(&fs)?;
    }
    Ok(es)
}
