//! Rendering for a terminal: everything another user chose (messages, names, reasons) goes
//! through [`sanitize`], so nobody can move the cursor, recolour, clear or retitle someone
//! else's terminal, ring its bell, or reorder text with bidirectional controls.

use std::borrow::Cow;
use std::fmt::Write;

use parley_proto::event::{Departure, Event, PartReason, Presence, Private, RoomMessage, Stored};

/// Makes `text` safe to print: control characters become visible caret notation (`ESC` is
/// `^[`, a newline `^J`), and C1 controls, bidirectional overrides and line separators become
/// `\u{..}` escapes. Text without any of them is returned as is, without copying.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push((c as u8 + b'@') as char);
            }
            '\u{7f}' => out.push_str("^?"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        // Bidirectional embeddings, overrides and isolates ("Trojan Source").
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        // Line and paragraph separators would split one event over several lines.
        | '\u{2028}' | '\u{2029}'
    )
}

/// One line for an event, as the line-mode client prints it; `None` for events not shown.
pub fn event_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Message(RoomMessage {
            room, from, text, ..
        }) => message_line(room, from, text),
        Event::Private(Private { from, text, .. }) => {
            format!("[private from {}] {}", sanitize(from), sanitize(text))
        }
        Event::Join(Presence { room, users }) => {
            format!("* {} joined #{}", names(users), sanitize(room))
        }
        Event::Part(Departure {
            room,
            users,
            reason,
        }) => {
            let who = names(users);
            let room = sanitize(room);
            match reason {
                PartReason::Part => format!("* {who} left #{room}"),
                PartReason::Quit => format!("* {who} quit"),
                PartReason::Lost => format!("* {who} left (connection lost)"),
                PartReason::Timeout => format!("* {who} left (timed out)"),
                PartReason::TooSlow => format!("* {who} was disconnected (too slow to keep up)"),
                PartReason::ProtocolError => format!("* {who} was disconnected (protocol error)"),
                PartReason::Flooding => format!("* {who} was disconnected (flooding)"),
                PartReason::Other => format!("* {who} left #{room}"),
            }
        }
        Event::Shared(shared) => format!(
            "* {} shared {} ({})",
            sanitize(&shared.user),
            sanitize(&shared.path),
            format_size(shared.size)
        ),
        // Several lines, each marked as history.
        Event::Backlog(backlog) => {
            let mut lines = vec![format!(
                "-- the last {} messages of #{} --",
                backlog.messages.len(),
                sanitize(&backlog.room)
            )];
            lines.extend(backlog.messages.iter().map(stored_line));
            lines.join("\n")
        }
        // A large room's size changes with every batch of arrivals: a line each would drown
        // the conversation. `/who` tells the size.
        Event::Members(_) | Event::Bye(_) | Event::TransferEnd(_) | Event::UploadProgress(_) => {
            return None;
        }
    })
}

/// A stored message, marked as history with its date so it is not mistaken for a new one.
pub fn stored_line(message: &Stored) -> String {
    let when = format_time(message.ts);
    let from = sanitize(&message.from);
    let text = sanitize(&message.text);
    match (&message.room, &message.to) {
        (Some(room), _) => format!("history {when} [#{}] {from}: {text}", sanitize(room)),
        (None, Some(to)) => format!("history {when} [private {from} to {}] {text}", sanitize(to)),
        (None, None) => format!("history {when} {from}: {text}"),
    }
}

/// A room message line, the same for one's own confirmed messages and others'.
pub fn message_line(room: &str, from: &str, text: &str) -> String {
    format!(
        "[#{}] {}: {}",
        sanitize(room),
        sanitize(from),
        sanitize(text)
    )
}

/// Names joined by ", ", each sanitized: the first few of a batch of arrivals, which can
/// hold thousands.
pub fn names(users: &[String]) -> String {
    roster(users, users.len(), 10)
}

/// Up to `shown` of `users` (the first of `count` names in all) joined by ", ", each
/// sanitized, and how many others there are.
pub fn roster(users: &[String], count: usize, shown: usize) -> String {
    let shown = users.len().min(shown);
    let mut line = users[..shown]
        .iter()
        .map(|u| sanitize(u))
        .collect::<Vec<_>>()
        .join(", ");
    let others = count.saturating_sub(shown);
    if others > 0 {
        line.push_str(&format!(
            " and {others} other{}",
            if others == 1 { "" } else { "s" }
        ));
    }
    line
}

/// A byte count for people: `512 B`, `24.0 MiB`, `1.5 GiB` (powers of 1024).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A time in milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM` in UTC.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// The lines `/files` prints for a listing: a heading, one line per entry, a summary.
pub fn listing_lines(listing: &parley_proto::request::Listing) -> Vec<String> {
    let mut lines = vec![format!("Shared files in /{}:", sanitize(&listing.path))];
    for entry in &listing.entries {
        let name = if entry.folder {
            format!("{}/", sanitize(&entry.name))
        } else {
            sanitize(&entry.name).into_owned()
        };
        let size = if entry.folder {
            "folder".to_owned()
        } else {
            format_size(entry.size)
        };
        let uploader = entry
            .uploader
            .as_ref()
            .map(|u| format!("  shared by {}", sanitize(u)))
            .unwrap_or_default();
        lines.push(format!(
            "  {name:<40} {size:>10}  {}{uploader}",
            format_time(entry.modified)
        ));
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    lines.push(format!(
        "{}, {}, {} in all",
        plural(listing.files, "file"),
        plural(listing.folders, "folder"),
        format_size(listing.total_bytes)
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_name_lists_are_cut_short() {
        let few: Vec<String> = ["ann", "bob"].map(String::from).into();
        assert_eq!(names(&few), "ann, bob");
        let many: Vec<String> = (0..25).map(|i| format!("u{i}")).collect();
        assert_eq!(
            names(&many),
            "u0, u1, u2, u3, u4, u5, u6, u7, u8, u9 and 15 others"
        );
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(24 * 1024 * 1024), "24.0 MiB");
        assert_eq!(
            format_size(5 * 1024 * 1024 * 1024 + 512 * 1024 * 1024),
            "5.5 GiB"
        );
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(format_time(1_795_246_800_000), "2026-11-21 07:40");
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(sanitize("héllo, wörld ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_become_visible() {
        assert_eq!(sanitize("\u{1b}[2Jgone"), "^[[2Jgone");
        assert_eq!(sanitize("a\nb\rc\u{7}"), "a^Jb^Mc^G");
        assert_eq!(sanitize("x\u{7f}"), "x^?");
        assert_eq!(sanitize("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(sanitize("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(sanitize("\u{2028}"), "\\u{2028}");
    }

    #[test]
    fn nothing_unsafe_survives() {
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let safe = sanitize(&nasty);
        assert!(!safe.chars().any(is_unsafe));
    }

    #[test]
    fn event_lines() {
        let event = Event::Message(RoomMessage {
            id: 1,
            ts: 0,
            room: "lobby".into(),
            from: "bob".into(),
            text: "hi \u{1b}]0;pwned\u{7}".into(),
        });
        assert_eq!(event_line(&event).unwrap(), "[#lobby] bob: hi ^[]0;pwned^G");
        let event = Event::Part(Departure {
            room: "lobby".into(),
            users: vec!["bob".into()],
            reason: PartReason::Lost,
        });
        assert_eq!(event_line(&event).unwrap(), "* bob left (connection lost)");
    }
}
