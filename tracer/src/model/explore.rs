//! Exhaustive exploration of every interleaving of the step machines: breadth-first over the
//! reachable states (deduplicated), checking the property in each one. Breadth-first makes the
//! first counterexample found a shortest one, which reads best.
use std::collections::{HashMap, VecDeque};

use super::machine::{Broken, Config, State, Step};

/// The result of exploring one configuration.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub config: Config,
    /// Distinct states reached.
    pub states: usize,
    /// Transitions taken (including those reaching already-seen states).
    pub transitions: usize,
    /// Final states (every thread done) reached.
    pub terminal: usize,
    /// A shortest path to a state breaking the property, if one is reachable.
    pub counterexample: Option<Counterexample>,
    /// When the first counterexample is a pin kept from inside a write section, a shortest
    /// path to the damage itself (a pinned page shared with the child), if reachable.
    pub damage: Option<Counterexample>,
}

#[derive(Clone, Debug)]
pub struct Counterexample {
    pub broken: Broken,
    pub steps: Vec<Step>,
}

/// Upper bound on states, far above any configuration the CLI allows (a guard, not a limit
/// that is expected to be hit).
pub const MAX_STATES: usize = 5_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    #[error("state space exceeds {MAX_STATES} states; use fewer writers or readers")]
    TooLarge,
}

pub fn explore(cfg: &Config) -> Result<Outcome, ExploreError> {
    let init = State::initial(cfg);
    // index -> (state, parent index and the step that reached it)
    let mut states: Vec<(State, Option<(usize, Step)>)> = vec![(init.clone(), None)];
    let mut seen: HashMap<State, usize> = HashMap::from([(init, 0)]);
    let mut queue = VecDeque::from([0usize]);
    let mut transitions = 0usize;
    let mut terminal = 0usize;
    let mut first: Option<Counterexample> = None;
    let mut damage: Option<Counterexample> = None;
    // The whole space is explored (it is small), broken states included, so that the damage
    // a kept pin leads to can be shown too.
    while let Some(idx) = queue.pop_front() {
        let Some((st, _)) = states.get(idx) else {
            break;
        };
        let st = st.clone();
        if first.is_none()
            && let Some(broken) = st.broken()
        {
            first = Some(Counterexample {
                broken,
                steps: path(&states, idx),
            });
        }
        if damage.is_none()
            && let Some(b) = st.damage()
        {
            damage = Some(Counterexample {
                broken: b,
                steps: path(&states, idx),
            });
        }
        if st.done() {
            terminal += 1;
            continue;
        }
        let movers: Vec<_> = st.enabled().collect();
        for who in movers {
            let Some((next, step)) = st.step(cfg, who) else {
                continue;
            };
            transitions += 1;
            if seen.contains_key(&next) {
                continue;
            }
            if states.len() >= MAX_STATES {
                return Err(ExploreError::TooLarge);
            }
            let n = states.len();
            seen.insert(next.clone(), n);
            states.push((next, Some((idx, step))));
            queue.push_back(n);
        }
    }
    // Show the damage separately only when the first counterexample is not already it.
    let damage = damage.filter(|d| first.as_ref().is_some_and(|f| f.broken != d.broken));
    Ok(Outcome {
        config: *cfg,
        states: states.len(),
        transitions,
        terminal,
        counterexample: first,
        damage,
    })
}

fn path(states: &[(State, Option<(usize, Step)>)], mut idx: usize) -> Vec<Step> {
    let mut out = Vec::new();
    while let Some((_, Some((parent, step)))) = states.get(idx) {
        out.push(*step);
        idx = *parent;
    }
    out.reverse();
    out
}
