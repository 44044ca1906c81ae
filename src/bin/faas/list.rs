//! `faas list [--json]`: a Name / IP / Warm / Command table of `GET /api/list`.

use faasd::api::List;

use crate::client::{say, CliError, Client};

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    /// Print the daemon's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    if args.json {
        // As the daemon sent it, fields this faas does not know included.
        let v: serde_json::Value = client.get("/api/list")?;
        let pretty = serde_json::to_string_pretty(&v).expect("a Value always serializes");
        return say(&pretty);
    }
    let list: List = client.get("/api/list")?;
    say(format_table(&rows(&list)).trim_end_matches('\n'))
}

/// One line of `faas list`.
#[derive(Debug, PartialEq)]
struct Row {
    name: String,
    ip: String,
    /// Containers waiting for a request (empty from a daemon that does not say).
    warm: String,
    command: String,
}

/// The rows, sorted by name (the list is a sorted map).
fn rows(list: &List) -> Vec<Row> {
    list.iter()
        .map(|(name, f)| Row {
            name: name.clone(),
            ip: f.ip.to_string(),
            warm: f.warm.map(|n| n.to_string()).unwrap_or_default(),
            command: f.cmd.join(" "),
        })
        .collect()
}

/// An aligned Name/IP/Warm/Command table, one line per row, no trailing spaces.
fn format_table(rows: &[Row]) -> String {
    const HEAD: [&str; 4] = ["Name", "IP", "Warm", "Command"];
    let width = |h: &str, f: &dyn Fn(&Row) -> &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .chain([h.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let w_name = width(HEAD[0], &|r| &r.name);
    let w_ip = width(HEAD[1], &|r| &r.ip);
    let w_warm = width(HEAD[2], &|r| &r.warm);
    let mut out = String::new();
    let mut line = |a: &str, b: &str, c: &str, d: &str| {
        let l = format!("{a:<w_name$}  {b:<w_ip$}  {c:<w_warm$}  {d}");
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(HEAD[0], HEAD[1], HEAD[2], HEAD[3]);
    for r in rows {
        line(&r.name, &r.ip, &r.warm, &r.command);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(ip: &str, cmd: &[&str]) -> serde_json::Value {
        json!({"ip": ip, "rootfs": "/r", "cmd": cmd,
               "resources": {"memory_bytes": 1, "cpu_millis": 1, "pids_max": 1}})
    }

    #[test]
    fn table_is_sorted_and_aligned() {
        let (mut zeta, mut a) = (
            entry("10.0.0.11", &["/bin/handler"]),
            entry("10.0.0.100", &["python3", "-u", "/app/h.py"]),
        );
        zeta["warm"] = json!(1);
        a["warm"] = json!(12);
        // middle-name comes from a daemon that does not report warm containers.
        let v = json!({ "zeta": zeta, "a": a, "middle-name": entry("10.0.0.9", &[]) });
        let list: List = serde_json::from_value(v).unwrap();
        let table = format_table(&rows(&list));
        let expected = "\
Name         IP          Warm  Command
a            10.0.0.100  12    python3 -u /app/h.py
middle-name  10.0.0.9
zeta         10.0.0.11   1     /bin/handler
";
        assert_eq!(table, expected);
        for line in table.lines() {
            assert_eq!(line, line.trim_end(), "no trailing spaces");
        }
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(
            format_table(&rows(&List::new())),
            "Name  IP  Warm  Command\n"
        );
    }

    #[test]
    fn fields_this_faas_does_not_know_are_ignored() {
        let mut e = entry("10.0.0.10", &["/h"]);
        e["some_future_field"] = json!(2);
        let list: List = serde_json::from_value(json!({ "f": e })).unwrap();
        assert_eq!(rows(&list)[0].command, "/h");
    }

    #[test]
    fn table_aligns_by_characters_not_bytes() {
        let rows = vec![
            Row {
                name: "héllo".into(),
                ip: "1".into(),
                warm: "".into(),
                command: "c".into(),
            },
            Row {
                name: "abcdef".into(),
                ip: "2".into(),
                warm: "".into(),
                command: "d".into(),
            },
        ];
        let t = format_table(&rows);
        let cols: Vec<usize> = t
            .lines()
            .map(|l| {
                l.char_indices()
                    .position(|(_, c)| c == '1' || c == '2' || c == 'I')
                    .unwrap()
            })
            .collect();
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
