//! A demo day as plain data: Boards, providers with their hours and breaks, and the
//! patients who will ask for an appointment, with how long everything will take.
//!
//! Generated from a seed with ChaCha8, so a seed always gives the same day. The
//! history simulation and the live driver both play the same scenario.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub date: NaiveDate,
    pub boards: Vec<BoardPlan>,
    pub providers: Vec<ProviderPlan>,
}

#[derive(Debug, Clone)]
pub struct BoardPlan {
    pub id: Uuid,
    pub name: String,
    pub specialty: String,
    pub region: String,
    pub opens_at: DateTime<Utc>,
    /// Providers on this Board: indexes into `Scenario::providers`, with their hours.
    pub shifts: Vec<ShiftPlan>,
    pub arrivals: Vec<Arrival>,
}

#[derive(Debug, Clone)]
pub struct ProviderPlan {
    pub id: Uuid,
    pub name: String,
    pub specialties: Vec<String>,
    pub regions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ShiftPlan {
    pub provider: usize,
    pub joins_at: DateTime<Utc>,
    /// From then on the provider signs off as soon as READY with nobody they could
    /// take waiting.
    pub leaves_at: DateTime<Utc>,
    /// Breaks: paused from the first READY moment after the start until the end.
    pub breaks: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl ShiftPlan {
    /// Past their hours, a provider may leave before the last patients have come only
    /// with two colleagues staying on; after that, whenever they are free.
    pub fn may_leave(arrivals_over: bool, colleagues_staying: usize) -> bool {
        arrivals_over || colleagues_staying >= 2
    }
}

/// A patient asking for an appointment, and how their appointment will go.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: DateTime<Utc>,
    pub patient: String,
    pub specialty: String,
    pub region: String,
    pub reason: String,
    /// Scheduled → started (the patient joins the call).
    pub lead: Duration,
    /// Started → finished.
    pub consult: Duration,
    /// The provider's charting after it.
    pub charting: Duration,
    /// Leaves (cancels) if still waiting after this long.
    pub patience: Option<Duration>,
    /// Never joins once scheduled: cancelled after the lead plus a grace period.
    pub no_show: bool,
}

/// What the generator varies.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub seed: u64,
    pub date: NaiveDate,
    pub boards: usize,
    /// Multiplies the arrival rates (1.0: a realistic day, about 120 patients a Board).
    pub load: f64,
}

/// (specialty, region, Board name, mean consult minutes)
const CLINICS: [(&str, &str, &str, i64); 5] = [
    ("pediatrics", "TX", "Pediatrics · Texas", 14),
    ("dermatology", "CA", "Dermatology · California", 11),
    ("primary care", "NY", "Primary care · New York", 16),
    ("psychiatry", "FL", "Psychiatry · Florida", 24),
    ("cardiology", "WA", "Cardiology · Washington", 19),
];
const OTHER_REGIONS: [&str; 4] = ["OK", "NM", "AZ", "NV"];
const FIRST: [&str; 16] = [
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
    "Luca", "Maya", "Noah", "Omar", "Priya",
];
const LAST: [&str; 12] = [
    "Park", "Okafor", "Silva", "Novak", "Haddad", "Kim", "Larsen", "Moreau", "Rossi", "Tanaka",
    "Weber", "Young",
];
const REASONS: [&str; 8] = [
    "fever",
    "rash",
    "follow-up",
    "medication review",
    "cough",
    "headache",
    "lab results",
    "new symptoms",
];

/// Patients per hour per Board at load 1.0, by UTC hour: a morning peak, a lunch dip,
/// an afternoon peak.
fn hourly_rate(hour: u32) -> f64 {
    match hour {
        8 => 7.0,
        9 => 13.0,
        10 => 16.0,
        11 => 13.0,
        12 => 7.0,
        13 => 10.0,
        14 => 15.0,
        15 => 16.0,
        16 => 11.0,
        17 => 5.0,
        _ => 0.0,
    }
}

fn at(date: NaiveDate, h: u32, m: u32) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(NaiveTime::from_hms_opt(h, m, 0).expect("valid time")))
}

fn minutes(rng: &mut ChaCha8Rng, mean: f64, spread: f64) -> Duration {
    let f = rng.random_range(1.0 - spread..=1.0 + spread);
    Duration::seconds((mean * f * 60.0).round() as i64)
}

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// An id drawn from the generator: same seed, same ids.
pub fn uuid(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

pub fn generate(options: &ScenarioOptions) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let date = options.date;
    let mut providers = Vec::new();
    let mut boards = Vec::new();
    for b in 0..options.boards.max(1) {
        let (specialty, region, name, consult_mean) = CLINICS[b % CLINICS.len()];
        let board_id = uuid(&mut rng);
        let mut shifts = Vec::new();
        let staff = rng.random_range(5..=7);
        for _ in 0..staff {
            let mut specialties = vec![specialty.to_string()];
            if rng.random_bool(0.3) {
                let other = CLINICS[rng.random_range(0..CLINICS.len())].0;
                if other != specialty {
                    specialties.push(other.to_string());
                }
            }
            let mut regions = vec![region.to_string()];
            for r in OTHER_REGIONS {
                if rng.random_bool(0.3) {
                    regions.push(r.to_string());
                }
            }
            let id = uuid(&mut rng);
            providers.push(ProviderPlan {
                id,
                name: format!("Dr. {} {}", pick(&mut rng, &FIRST), pick(&mut rng, &LAST)),
                specialties,
                regions,
            });
            let joins_at = at(date, 7, 50) + Duration::minutes(rng.random_range(0..=100));
            let leaves_at = at(date, 16, 0) + Duration::minutes(rng.random_range(0..=150));
            let lunch = at(date, 11, 30) + Duration::minutes(rng.random_range(0..=90));
            let mut breaks = vec![(lunch, lunch + Duration::minutes(rng.random_range(25..=45)))];
            if rng.random_bool(0.5) {
                let short = at(date, 15, 0) + Duration::minutes(rng.random_range(0..=40));
                breaks.push((short, short + Duration::minutes(10)));
            }
            shifts.push(ShiftPlan {
                provider: providers.len() - 1,
                joins_at,
                leaves_at,
                breaks,
            });
        }
        let mut arrivals = Vec::new();
        // A Poisson process with an hourly rate, by thinning.
        let peak = 16.0 * options.load;
        let mut t = at(date, 8, 0);
        let end = at(date, 17, 45);
        loop {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            t += Duration::milliseconds((-u.ln() / peak * 3_600_000.0) as i64);
            if t >= end {
                break;
            }
            let rate = hourly_rate(chrono::Timelike::hour(&t)) * options.load;
            if rng.random_range(0.0..peak) > rate {
                continue;
            }
            // Every patient asks for what the Board serves: a Board refuses a request
            // for another specialty or region (no provider there could take it).
            let mean = consult_mean as f64;
            arrivals.push(Arrival {
                at: t,
                patient: format!("{} {}", pick(&mut rng, &FIRST), pick(&mut rng, &LAST)),
                specialty: specialty.to_string(),
                region: region.to_string(),
                reason: pick(&mut rng, &REASONS).to_string(),
                lead: minutes(&mut rng, 2.0, 0.5),
                consult: minutes(&mut rng, mean, 0.4),
                charting: minutes(&mut rng, 5.0, 0.4),
                patience: rng
                    .random_bool(0.1)
                    .then(|| Duration::minutes(rng.random_range(30..=60))),
                no_show: rng.random_bool(0.03),
            });
        }
        boards.push(BoardPlan {
            id: board_id,
            name: name.to_string(),
            specialty: specialty.to_string(),
            region: region.to_string(),
            opens_at: at(date, 7, 45),
            shifts,
            arrivals,
        });
    }
    Scenario {
        date,
        boards,
        providers,
    }
}
