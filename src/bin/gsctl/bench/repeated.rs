//! The report of repeated runs (`--repeats`) and of comparisons of more than
//! two servers (`--before-bin`): each figure's median over the repeats, its
//! range, and ratios of the medians.
//!
//! One run per server on a shared machine measures the machine as much as
//! the server: its load drifts within a comparison, and whoever runs first
//! or last gets the drift. Repeats in a rotating order give every server
//! each place equally often, and the median of a few repeats ignores one
//! stalled run.

use serde_json::{Map, Value, json};

use super::{ClientCpu, Measured, Metric};

/// One run of the scenario on one server.
pub struct Repeat {
    /// Which repeat, from 1.
    pub repeat: usize,
    /// Its place in that repeat's order, from 1.
    pub position: usize,
    pub measured: Measured,
}

/// One server's repeats, and its figures over them.
pub struct Server {
    name: &'static str,
    /// In repeat order.
    repeats: Vec<Repeat>,
    /// Each figure with its value in every repeat, in the first repeat's
    /// order.
    figures: Vec<Figure>,
}

/// One figure over the repeats.
struct Figure {
    key: String,
    label: String,
    decimals: usize,
    /// Per repeat; `None` where it could not be measured.
    values: Vec<Option<f64>>,
}

impl Figure {
    /// The values that were measured, ascending.
    fn measured(&self) -> Vec<f64> {
        let mut values: Vec<f64> = self.values.iter().flatten().copied().collect();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The median of the measured values (the mean of the middle two for an
    /// even count).
    fn median(&self) -> Option<f64> {
        let values = self.measured();
        let middle = values.len() / 2;
        match values.len() {
            0 => None,
            n if n % 2 == 1 => Some(values[middle]),
            _ => Some((values[middle - 1] + values[middle]) / 2.0),
        }
    }

    fn range(&self) -> Option<(f64, f64)> {
        let values = self.measured();
        Some((*values.first()?, *values.last()?))
    }
}

impl Server {
    pub fn new(name: &'static str, repeats: Vec<Repeat>) -> Server {
        let mut figures: Vec<Figure> = Vec::new();
        for (index, repeat) in repeats.iter().enumerate() {
            for metric in figures_of(&repeat.measured) {
                let figure = match figures.iter_mut().find(|f| f.key == metric.key) {
                    Some(figure) => figure,
                    None => {
                        figures.push(Figure {
                            key: metric.key.clone(),
                            label: metric.label.clone(),
                            decimals: metric.decimals,
                            values: vec![None; repeats.len()],
                        });
                        let last = figures.len() - 1;
                        &mut figures[last]
                    }
                };
                figure.values[index] = metric.value;
            }
        }
        Server { name, repeats, figures }
    }

    fn median(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.key == key)?.median()
    }

    /// The repeats in which the client may have been the limit.
    fn client_limited(&self) -> Vec<(usize, ClientCpu)> {
        self.repeats
            .iter()
            .filter_map(|r| Some((r.repeat, r.measured.client?)))
            .filter(|(_, client)| client.may_have_been_the_limit())
            .collect()
    }

    /// What the table prints under it for this server: when the client may
    /// have been the limit, and each repeat's other notes.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let limited = self.client_limited();
        if let Some(busiest) = limited.iter().map(|(_, c)| *c).max_by(|a, b| a.per_thread().total_cmp(&b.per_thread()))
        {
            let which: Vec<String> = limited.iter().map(|(repeat, _)| repeat.to_string()).collect();
            notes.push(format!(
                "the client may have been the limit in {} of {} repeat(s) ({}): up to {:.2} cores per thread \
                 on {} thread(s); give it more (--client-threads) or run it on another machine",
                limited.len(),
                self.repeats.len(),
                which.join(", "),
                busiest.per_thread(),
                busiest.threads
            ));
        }
        for repeat in &self.repeats {
            let client_note = repeat.measured.client.map(|c| c.note());
            for note in repeat.measured.notes.iter().filter(|n| Some(*n) != client_note.as_ref()) {
                notes.push(format!("repeat {}: {note}", repeat.repeat));
            }
        }
        notes
    }
}

/// A run's figures, and the client's cores per thread where its CPU was
/// measured (the figure that says whether the client kept up).
fn figures_of(measured: &Measured) -> Vec<Metric> {
    let mut figures = measured.metrics.clone();
    if let Some(client) = measured.client {
        figures.push(Metric {
            key: "client_cores_per_thread".into(),
            label: "client cores per thread".into(),
            value: Some(client.per_thread()),
            decimals: 2,
        });
    }
    figures
}

/// The pairs the report divides, as indexes into the servers (ours first,
/// the baseline last): each server over the baseline, then each over every
/// later one but the baseline. With game-session, before and baseline:
/// game-session/baseline, before/baseline, game-session/before.
fn pairs(servers: usize) -> Vec<(usize, usize)> {
    let Some(last) = servers.checked_sub(1) else { return Vec::new() };
    let over_last = (0..last).map(|i| (i, last));
    let among_others = (0..last).flat_map(|i| (i + 1..last).map(move |j| (i, j)));
    over_last.chain(among_others).collect()
}

/// `ours / theirs` of one figure's medians, when both exist and theirs is
/// not zero.
fn ratio(ours: &Server, theirs: &Server, key: &str) -> Option<f64> {
    let theirs = theirs.median(key)?;
    (theirs != 0.0).then_some(ours.median(key)? / theirs)
}

/// The JSON report: the workload, the order of every repeat, each server's
/// medians with every repeat's figures (`runs`), and the ratios of the
/// medians: `ratio` is the first server over the last (game-session over
/// the baseline), `ratios` every pair by name.
pub fn report(workload: Value, servers: &[Server], repeats: usize) -> Value {
    let mut by_name = Map::new();
    for server in servers {
        let mut figures: Map<String, Value> =
            server.figures.iter().map(|f| (f.key.clone(), f.median().map_or(Value::Null, |m| json!(m)))).collect();
        figures.insert("notes".into(), json!(server.notes()));
        let limited: Vec<usize> = server.client_limited().iter().map(|(repeat, _)| *repeat).collect();
        figures.insert("client_may_have_been_the_limit_in_repeats".into(), json!(limited));
        let runs: Vec<Value> = server
            .repeats
            .iter()
            .map(|repeat| {
                let mut run = Map::new();
                run.insert("repeat".into(), json!(repeat.repeat));
                run.insert("position".into(), json!(repeat.position));
                for metric in figures_of(&repeat.measured) {
                    run.insert(metric.key, metric.value.map_or(Value::Null, |v| json!(v)));
                }
                run.insert("notes".into(), json!(repeat.measured.notes));
                run.extend(repeat.measured.details.clone());
                Value::Object(run)
            })
            .collect();
        figures.insert("runs".into(), Value::Array(runs));
        by_name.insert(server.name.into(), Value::Object(figures));
    }
    // The order the servers ran in, repeat by repeat.
    let orders: Vec<Vec<&str>> = (1..=repeats)
        .map(|number| {
            let mut order: Vec<(usize, &str)> = servers
                .iter()
                .filter_map(|s| Some((s.repeats.iter().find(|r| r.repeat == number)?.position, s.name)))
                .collect();
            order.sort();
            order.into_iter().map(|(_, name)| name).collect()
        })
        .collect();
    let mut report = json!({ "workload": workload, "repeats": repeats, "orders": orders, "servers": by_name });
    let ratios_of = |ours: &Server, theirs: &Server| -> Value {
        let ratios: Map<String, Value> = ours
            .figures
            .iter()
            .map(|f| (f.key.clone(), ratio(ours, theirs, &f.key).map_or(Value::Null, |r| json!(r))))
            .collect();
        Value::Object(ratios)
    };
    if let (Some(first), Some(last), true) = (servers.first(), servers.last(), servers.len() > 1) {
        report["ratio"] = ratios_of(first, last);
        let ratios: Map<String, Value> = pairs(servers.len())
            .into_iter()
            .map(|(a, b)| (format!("{}/{}", servers[a].name, servers[b].name), ratios_of(&servers[a], &servers[b])))
            .collect();
        report["ratios"] = Value::Object(ratios);
    }
    report
}

/// The table: per figure, each server's median (with min–max where the
/// repeats differ), then the ratios of the medians; under it, each
/// server's notes.
pub fn print_table(describe: &str, servers: &[Server], repeats: usize) {
    println!("{describe}");
    let Some(first) = servers.first() else { return };
    if repeats > 1 {
        println!(
            "median (min–max) of {repeats} repeats, the servers' order rotated by one each repeat; \
             ratios of the medians"
        );
    }
    let decimals = |figure: Option<&Figure>| figure.map_or(0, |f| f.decimals);
    let pairs = pairs(servers.len());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec![String::new()];
    header.extend(servers.iter().map(|s| s.name.to_owned()));
    header.extend(pairs.iter().map(|(a, b)| format!("{}/{}", servers[*a].name, servers[*b].name)));
    rows.push(header);
    for figure in &first.figures {
        let mut row = vec![figure.label.clone()];
        for server in servers {
            let figure = server.figures.iter().find(|f| f.key == figure.key);
            let cell = match (figure.and_then(Figure::median), figure.and_then(Figure::range)) {
                // A range only where the repeats differed as shown.
                (Some(median), Some((min, max)))
                    if format!("{min:.*}", decimals(figure)) != format!("{max:.*}", decimals(figure)) =>
                {
                    let d = decimals(figure);
                    format!("{median:.d$} ({min:.d$}–{max:.d$})")
                }
                (Some(median), _) => format!("{median:.*}", decimals(figure)),
                (None, _) => "-".to_owned(),
            };
            row.push(cell);
        }
        for (a, b) in &pairs {
            let shown = ratio(&servers[*a], &servers[*b], &figure.key);
            row.push(shown.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")));
        }
        rows.push(row);
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|row| row.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                line.push_str(&format!("{cell:<width$}", width = widths[0]));
            } else {
                line.push_str(&format!("  {cell:>width$}", width = widths[c]));
            }
        }
        println!("{line}");
    }
    for server in servers {
        for note in server.notes() {
            println!("{}: {note}", server.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(values: &[Option<f64>]) -> Figure {
        Figure { key: "k".into(), label: "k".into(), decimals: 0, values: values.to_vec() }
    }

    /// Catches a median that is not the middle value (odd count), nor the
    /// mean of the middle two (even count), or that counts unmeasured runs.
    #[test]
    fn median_of_the_measured_values() {
        assert_eq!(figure(&[Some(3.0), Some(1.0), Some(2.0)]).median(), Some(2.0));
        assert_eq!(figure(&[Some(4.0), Some(1.0), Some(2.0), Some(3.0)]).median(), Some(2.5));
        assert_eq!(figure(&[None, Some(5.0)]).median(), Some(5.0));
        assert_eq!(figure(&[None, None]).median(), None);
        assert_eq!(figure(&[Some(4.0), Some(1.0), None]).range(), Some((1.0, 4.0)));
    }

    /// A run whose client used `cores` on 2 threads, with the notes the
    /// relay scenario gives it and one of its own.
    fn run(repeat: usize, cores: f64, note: Option<&str>) -> Repeat {
        let client = ClientCpu { cores, threads: 2 };
        let mut measured = Measured { client: Some(client), ..Measured::default() };
        measured.add("client_cores", "client cores used", Some(cores), 2);
        if client.may_have_been_the_limit() {
            measured.notes.push(client.note());
        }
        measured.notes.extend(note.map(str::to_owned));
        Repeat { repeat, position: 1, measured }
    }

    /// Catches a repeated report that hides a client that may have been the
    /// limit, or that repeats the per-run note instead of summing it up: the
    /// server's notes say in which repeats, at how many cores per thread, and
    /// keep each repeat's other notes; the per-thread figure is reported.
    #[test]
    fn notes_say_in_which_repeats_the_client_may_have_been_the_limit() {
        let server = Server::new("baseline", vec![run(1, 1.9, None), run(2, 1.0, Some("slow")), run(3, 1.84, None)]);
        assert_eq!(
            server.notes(),
            vec![
                "the client may have been the limit in 2 of 3 repeat(s) (1, 3): up to 0.95 cores per thread on 2 \
                 thread(s); give it more (--client-threads) or run it on another machine"
                    .to_owned(),
                "repeat 2: slow".to_owned(),
            ]
        );
        assert_eq!(server.median("client_cores_per_thread"), Some(0.92));
        let report = report(Value::Null, &[server], 3);
        assert_eq!(report["servers"]["baseline"]["client_may_have_been_the_limit_in_repeats"], json!([1, 3]));
    }

    /// Catches ratios in the wrong pairs or the wrong direction: with
    /// game-session, before and baseline, game-session/baseline,
    /// before/baseline, then game-session/before.
    #[test]
    fn pairs_put_the_baseline_last() {
        assert_eq!(pairs(3), vec![(0, 2), (1, 2), (0, 1)]);
        assert_eq!(pairs(2), vec![(0, 1)]);
        assert_eq!(pairs(1), Vec::<(usize, usize)>::new());
    }
}
