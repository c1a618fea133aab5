//! What the simulated terminals will ask for, decided before anything is
//! signed: the operation mix, which card each request names and the
//! amounts. Knowing the whole plan in advance lets provisioning fund every
//! card with exactly what the plan will spend from it, so no purchase is
//! declined for lack of funds, and lets refunds be backed by purchases made
//! during setup.
use std::fmt;

use cardd::limits::{MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The operation kinds the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A purchase (state-changing).
    Purchase,
    /// A top-up (state-changing).
    TopUp,
    /// A balance inquiry (read-only).
    Inquiry,
    /// A refund of part of a setup purchase (state-changing).
    Refund,
}

impl Kind {
    /// Every kind, in the order of [`Mix::weights`].
    pub const ALL: [Kind; 4] = [Kind::Purchase, Kind::TopUp, Kind::Inquiry, Kind::Refund];

    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::TopUp => "topup",
            Kind::Inquiry => "inquiry",
            Kind::Refund => "refund",
        }
    }
}

/// The share of each operation kind, in percent (summing to 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Percentages in the order of [`Kind::ALL`].
    pub weights: [u32; 4],
}

impl Mix {
    /// Parses `purchase=90,topup=5,inquiry=5[,refund=N]`. Kinds left out
    /// get 0; the percentages must add up to 100.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not KIND=PERCENT"))?;
            let i = match name.trim().to_ascii_lowercase().as_str() {
                "purchase" => 0,
                "topup" | "top-up" => 1,
                "inquiry" => 2,
                "refund" => 3,
                other => {
                    return Err(format!(
                        "unknown kind `{other}` (purchase, topup, inquiry, refund)"
                    ))
                }
            };
            if seen[i] {
                return Err(format!("`{}` given twice", Kind::ALL[i].name()));
            }
            seen[i] = true;
            weights[i] = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|v| *v <= 100)
                .ok_or_else(|| format!("`{value}` is not a whole percentage 0-100"))?;
        }
        let sum: u32 = weights.iter().sum();
        if sum != 100 {
            return Err(format!("the percentages add up to {sum}, not 100"));
        }
        Ok(Mix { weights })
    }

    /// The kind for a roll in `0..100`.
    fn pick(&self, roll: u32) -> Kind {
        let mut acc = 0;
        for (kind, w) in Kind::ALL.iter().zip(self.weights) {
            acc += w;
            if roll < acc {
                return *kind;
            }
        }
        unreachable!("weights add up to 100")
    }

    /// The percentage of `kind`.
    pub fn weight(&self, kind: Kind) -> u32 {
        self.weights[Kind::ALL.iter().position(|k| *k == kind).expect("a kind")]
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Kind::ALL
            .iter()
            .zip(self.weights)
            .filter(|(_, w)| *w > 0)
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// One planned request. Cards are indexes into the bench's card list;
/// refunds name one of their terminal's setup purchases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanOp {
    /// Pay `amount` from `card`.
    Purchase {
        /// Card index.
        card: u32,
        /// Minor units.
        amount: i64,
    },
    /// Load `amount` onto `card`.
    TopUp {
        /// Card index.
        card: u32,
        /// Minor units.
        amount: i64,
    },
    /// Ask for `card`'s balance.
    Inquiry {
        /// Card index.
        card: u32,
    },
    /// Refund `amount` of the terminal's setup purchase number `seed`.
    Refund {
        /// Index into the terminal's seed purchases.
        seed: u32,
        /// Minor units.
        amount: i64,
    },
}

/// A purchase made during setup that the terminal's refunds refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    /// Card index.
    pub card: u32,
    /// Minor units: exactly the sum of the refunds that name it.
    pub amount: i64,
}

/// One terminal's plan.
#[derive(Debug, Clone, Default)]
pub struct TerminalPlan {
    /// The requests, in sending order.
    pub ops: Vec<PlanOp>,
    /// Purchases to make before the measured window, backing the refunds.
    pub seeds: Vec<Seed>,
}

/// How traffic is spread over the cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// Number of cards.
    pub cards: u32,
    /// The first `hot` cards get `hot_share` percent of the traffic
    /// (0 = uniform over all cards).
    pub hot: u32,
    /// Percent of requests that go to the hot cards.
    pub hot_share: u32,
}

impl Spread {
    fn card(&self, rng: &mut StdRng) -> u32 {
        if self.hot > 0 && rng.gen_range(0..100) < self.hot_share {
            rng.gen_range(0..self.hot)
        } else {
            rng.gen_range(0..self.cards)
        }
    }
}

/// The amounts used, in minor units of a currency with `exponent` decimals.
#[derive(Debug, Clone, Copy)]
pub struct Amounts {
    unit: i64,
}

impl Amounts {
    /// Amounts for a currency with `exponent` decimals (at most 6).
    pub fn new(exponent: u32) -> Result<Self, String> {
        if exponent > 6 {
            return Err(format!(
                "currencies with {exponent} decimals are not supported by bench"
            ));
        }
        Ok(Amounts {
            unit: 10i64.pow(exponent),
        })
    }
    /// One unit of currency (1.00) in minor units.
    pub fn unit(&self) -> i64 {
        self.unit
    }
    fn purchase(&self, rng: &mut StdRng) -> i64 {
        rng.gen_range(self.unit..=50 * self.unit)
    }
    fn top_up(&self, rng: &mut StdRng) -> i64 {
        rng.gen_range(10 * self.unit..=200 * self.unit)
    }
    fn refund(&self, rng: &mut StdRng) -> i64 {
        rng.gen_range(self.unit..=5 * self.unit)
    }
}

/// Most setup purchases backing one terminal's refunds.
const MAX_SEEDS: usize = 16;

/// Plans `len` requests for terminal `index`, reproducibly from `seed`.
pub fn plan_terminal(
    index: u32,
    len: usize,
    mix: &Mix,
    spread: &Spread,
    amounts: &Amounts,
    seed: u64,
) -> TerminalPlan {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(index) << 32) ^ 0x9e37_79b9);
    let mut ops = Vec::with_capacity(len);
    let mut refunds = 0usize;
    for _ in 0..len {
        let op = match mix.pick(rng.gen_range(0..100)) {
            Kind::Purchase => PlanOp::Purchase {
                card: spread.card(&mut rng),
                amount: amounts.purchase(&mut rng),
            },
            Kind::TopUp => PlanOp::TopUp {
                card: spread.card(&mut rng),
                amount: amounts.top_up(&mut rng),
            },
            Kind::Inquiry => PlanOp::Inquiry {
                card: spread.card(&mut rng),
            },
            Kind::Refund => {
                refunds += 1;
                PlanOp::Refund {
                    seed: 0,
                    amount: amounts.refund(&mut rng),
                }
            }
        };
        ops.push(op);
    }
    let mut seeds: Vec<Seed> = Vec::new();
    if refunds > 0 {
        // Refunds are spread round-robin over a few setup purchases on
        // different cards, each exactly as large as its refunds; a purchase
        // that would exceed the per-operation limit makes way for a new one.
        let first = refunds.min(MAX_SEEDS);
        seeds = (0..first)
            .map(|_| Seed {
                card: spread.card(&mut rng),
                amount: 0,
            })
            .collect();
        let mut next = 0usize;
        for op in &mut ops {
            if let PlanOp::Refund { seed, amount } = op {
                let mut i = next % first;
                if seeds[i].amount + *amount > MAX_AMOUNT_MINOR {
                    i = seeds.len() - 1;
                    if seeds[i].amount + *amount > MAX_AMOUNT_MINOR {
                        seeds.push(Seed {
                            card: spread.card(&mut rng),
                            amount: 0,
                        });
                        i = seeds.len() - 1;
                    }
                }
                *seed = u32::try_from(i).expect("seeds are bounded by the pool");
                seeds[i].amount += *amount;
                next += 1;
            }
        }
    }
    TerminalPlan { ops, seeds }
}

/// What every card must be loaded with before the measured window.
#[derive(Debug, Clone, Default)]
pub struct Funding {
    /// Minor units per card (index as in the card list).
    pub per_card: Vec<i64>,
}

impl Funding {
    /// Sums what the plans will take from each card (purchases and setup
    /// purchases), with at least `floor` on every card. Refuses plans that
    /// would push a card past the balance limit.
    pub fn for_plans(plans: &[TerminalPlan], cards: u32, floor: i64) -> Result<Self, String> {
        let n = cards as usize;
        let mut spend = vec![0i64; n];
        let mut load = vec![0i64; n];
        for p in plans {
            for op in &p.ops {
                match *op {
                    PlanOp::Purchase { card, amount } => spend[card as usize] += amount,
                    PlanOp::TopUp { card, amount } => load[card as usize] += amount,
                    _ => {}
                }
            }
            for s in &p.seeds {
                spend[s.card as usize] += s.amount;
            }
        }
        let mut per_card = Vec::with_capacity(n);
        for (i, (s, l)) in spend.iter().zip(&load).enumerate() {
            let fund = (*s).max(floor);
            // A top-up bonus can at most double a load (MAX_BONUS_BPS), plus a
            // fixed bonus: keep well inside the balance limit.
            if fund.saturating_add(*l).saturating_mul(2) > MAX_BALANCE_MINOR {
                return Err(format!(
                    "card {i} would be loaded with more than the balance limit: spread the \
                     traffic over more cards (--cards, --hot-cards) or lower --max-requests"
                ));
            }
            per_card.push(fund);
        }
        Ok(Funding { per_card })
    }

    /// The top-ups that load the funding: (card index, amount), each within
    /// the per-operation limit.
    pub fn top_ups(&self) -> Vec<(u32, i64)> {
        let mut out = Vec::with_capacity(self.per_card.len());
        for (i, total) in self.per_card.iter().enumerate() {
            let mut left = *total;
            while left > 0 {
                let amount = left.min(MAX_AMOUNT_MINOR);
                out.push((u32::try_from(i).expect("card index"), amount));
                left -= amount;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_print() {
        let m = Mix::parse("purchase=90,topup=5,inquiry=5").unwrap();
        assert_eq!(m.weights, [90, 5, 5, 0]);
        assert_eq!(m.to_string(), "purchase=90,topup=5,inquiry=5");
        let m = Mix::parse("refund=10, top-up=10 ,purchase=80").unwrap();
        assert_eq!(m.weights, [80, 10, 0, 10]);
        assert!(Mix::parse("purchase=90").is_err());
        assert!(Mix::parse("purchase=90,bogus=10").is_err());
        assert!(Mix::parse("purchase=50,purchase=50").is_err());
        assert!(Mix::parse("purchase=1.5").is_err());
        assert!(Mix::parse("").is_err());
    }

    #[test]
    fn the_mix_is_followed() {
        let mix = Mix::parse("purchase=70,topup=10,inquiry=10,refund=10").unwrap();
        let spread = Spread {
            cards: 100,
            hot: 0,
            hot_share: 0,
        };
        let p = plan_terminal(3, 10_000, &mix, &spread, &Amounts::new(2).unwrap(), 1);
        let purchases = p
            .ops
            .iter()
            .filter(|o| matches!(o, PlanOp::Purchase { .. }))
            .count();
        assert!((6_500..7_500).contains(&purchases), "{purchases}");
        // Every refund is backed by a seed purchase of exactly its total.
        let mut backed = vec![0i64; p.seeds.len()];
        for op in &p.ops {
            if let PlanOp::Refund { seed, amount } = op {
                backed[*seed as usize] += amount;
                assert!((100..=500).contains(amount));
            }
        }
        assert_eq!(backed, p.seeds.iter().map(|s| s.amount).collect::<Vec<_>>());
        assert!(p.seeds.len() <= MAX_SEEDS);
        // Reproducible.
        let q = plan_terminal(3, 10_000, &mix, &spread, &Amounts::new(2).unwrap(), 1);
        assert_eq!(p.ops, q.ops);
    }

    #[test]
    fn hot_cards_get_their_share() {
        let mix = Mix::parse("purchase=100").unwrap();
        let spread = Spread {
            cards: 1000,
            hot: 2,
            hot_share: 90,
        };
        let p = plan_terminal(0, 10_000, &mix, &spread, &Amounts::new(2).unwrap(), 7);
        let hot = p
            .ops
            .iter()
            .filter(|o| matches!(o, PlanOp::Purchase { card, .. } if *card < 2))
            .count();
        assert!((8_800..9_200).contains(&hot), "{hot}");
    }

    #[test]
    fn funding_covers_every_purchase() {
        let mix = Mix::parse("purchase=80,refund=20").unwrap();
        let spread = Spread {
            cards: 5,
            hot: 0,
            hot_share: 0,
        };
        let a = Amounts::new(2).unwrap();
        let plans: Vec<_> = (0..3)
            .map(|i| plan_terminal(i, 1000, &mix, &spread, &a, 9))
            .collect();
        let f = Funding::for_plans(&plans, 5, 10_000).unwrap();
        let mut spend = [0i64; 5];
        for p in &plans {
            for op in &p.ops {
                if let PlanOp::Purchase { card, amount } = op {
                    spend[*card as usize] += amount;
                }
            }
            for s in &p.seeds {
                spend[s.card as usize] += s.amount;
            }
        }
        for (fund, s) in f.per_card.iter().zip(spend) {
            assert!(*fund >= s && *fund >= 10_000);
        }
        let ups = f.top_ups();
        assert!(ups.iter().all(|(_, a)| *a > 0 && *a <= MAX_AMOUNT_MINOR));
        assert_eq!(
            ups.iter().map(|(_, a)| a).sum::<i64>(),
            f.per_card.iter().sum::<i64>()
        );
        // Large sums are split within the per-operation limit.
        let big = Funding {
            per_card: vec![2 * MAX_AMOUNT_MINOR + 5],
        };
        assert_eq!(
            big.top_ups(),
            vec![(0, MAX_AMOUNT_MINOR), (0, MAX_AMOUNT_MINOR), (0, 5)]
        );
    }
}
