//! The commands people type, in every form they know from the earlier Python tools
//! (`BROADCAST::hi`, `UNICAST::bob:hi`, `@bob hi`, `/unicast bob hi`) and the IRC-style ones.
//!
//! Parsing is pure: a line in, a [`Command`] or a [`ParseError`] out. A malformed command gets
//! the usage line of that command; an unknown slash command points to `/help`.

/// One thing the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send to the current room: a plain line, `/broadcast <text>`, `BROADCAST::<text>`.
    Say(String),
    /// Send privately: `/msg`, `/unicast`, `@user text`, `UNICAST::user:text`.
    Msg {
        /// The recipient.
        to: String,
        /// The message.
        text: String,
    },
    /// Who is online (`/users`, `/online`, `/who`), or in a room when one is named.
    Users(Option<String>),
    /// `/join <room>`.
    Join(String),
    /// `/part [room]`; the current room when none is named.
    Part(Option<String>),
    /// `/rooms`.
    Rooms,
    /// `/quit`, `/exit`, `EXIT::`.
    Quit,
    /// `/help`.
    Help,
    /// `/files [dir]`, `/file [dir]`, `ACCESS::[dir]`: list a shared folder.
    Files(Option<String>),
    /// `/download <path>`, `DOWNLOAD::<path>`.
    Download(String),
    /// `/history [n]` (the current room) or `/history @user [n]`: page back through history.
    History {
        /// The other person, for a private conversation.
        with: Option<String>,
        /// How many messages.
        count: Option<usize>,
    },
    /// `/search <words>`: find past messages.
    Search(String),
    /// `/register`: protect the current name with a password.
    Register,
    /// `/passwd`: change the password.
    Passwd,
    /// `/transfers`: list transfers in progress.
    Transfers,
    /// `/cancel <id>`: stop a transfer.
    Cancel(u32),
    /// `/upload <local path> [folder]`.
    Upload {
        /// The file to send.
        path: String,
        /// The shared folder to put it in.
        folder: Option<String>,
    },
}

/// Why a line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A known command used wrongly; holds its usage line.
    #[error("Usage: {0}")]
    Usage(&'static str),
    /// A slash command nobody knows.
    #[error("Unknown command {0}. Type /help for the list of commands.")]
    Unknown(String),
}

const USAGE_BROADCAST: &str = "/broadcast <message>  or  BROADCAST::<message>";
const USAGE_MSG: &str = "/msg <user> <message>";
const USAGE_UNICAST: &str = "/unicast <user> <message>";
const USAGE_AT: &str = "@<user> <message>";
const USAGE_UNICAST_OLD: &str = "UNICAST::<user>:<message>";
const USAGE_JOIN: &str = "/join <room>";
const USAGE_PART: &str = "/part [room]";
const USAGE_DOWNLOAD: &str = "/download <path>  or  DOWNLOAD::<path>";
const USAGE_UPLOAD: &str = "/upload <local path> [folder]";
const USAGE_HISTORY: &str = "/history [count]  or  /history @<user> [count]";
const USAGE_SEARCH: &str = "/search <words>";
const USAGE_CANCEL: &str = "/cancel <transfer id>  (see /transfers)";

/// Every command with all its forms, as `/help` prints it.
pub const HELP: &str = "\
Commands (every form on a line works the same):
  <message>                         say something to your current room
  /broadcast <message>              the same;  also BROADCAST::<message>
  /msg <user> <message>             private message;  also /unicast <user> <message>,
                                    @<user> <message>  and  UNICAST::<user>:<message>
  /users [room]                     who is online (or in a room);  also /online, /who
  /join <room>                      enter a room (created if new) and make it current
  /part [room]                      leave a room (the current one by default)
  /rooms                            list the rooms
  /files [dir]                      list a shared folder;  also /file, ACCESS::[dir]
  /download <path>                  download a shared file;  also DOWNLOAD::<path>
  /upload <local path> [folder]     share a file
  /history [n]                      older messages of your room (again: further back)
  /history @<user> [n]              your private messages with someone
  /search <words>                   find past messages you may see
  /register                         protect your name with a password (asked for next)
  /passwd                           change your password
  /transfers                        list downloads and uploads in progress
  /cancel <id>                      stop a transfer (its id is in /transfers)
  /help                             this list
  /quit                             leave;  also /exit, EXIT:: and end of input (Ctrl-D)
A line starting with // sends the rest as a message beginning with /.";

/// Parses one input line; `None` for a blank line, which does nothing.
pub fn parse(line: &str) -> Option<Result<Command, ParseError>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return None;
    }
    Some(parse_nonblank(line))
}

fn parse_nonblank(line: &str) -> Result<Command, ParseError> {
    if let Some(rest) = line.strip_prefix("//") {
        return Ok(Command::Say(format!("/{rest}")));
    }
    if let Some(rest) = line.strip_prefix('/') {
        return parse_slash(rest);
    }
    if let Some(rest) = line.strip_prefix('@') {
        return two_words(rest)
            .map(|(to, text)| Command::Msg { to, text })
            .ok_or(ParseError::Usage(USAGE_AT));
    }
    if let Some(command) = line
        .split_once("::")
        .and_then(|(keyword, rest)| parse_legacy(keyword, rest))
    {
        return command;
    }
    Ok(Command::Say(line.to_owned()))
}

/// The `KEYWORD::argument` forms of the earlier tools; `None` when `keyword` is not one, so the
/// line is an ordinary message that happens to hold `::`.
fn parse_legacy(keyword: &str, rest: &str) -> Option<Result<Command, ParseError>> {
    Some(match keyword {
        "BROADCAST" => nonempty(rest)
            .map(Command::Say)
            .ok_or(ParseError::Usage(USAGE_BROADCAST)),
        "UNICAST" => rest
            .split_once(':')
            .and_then(|(to, text)| Some((word(to)?, nonempty(text)?)))
            .map(|(to, text)| Command::Msg { to, text })
            .ok_or(ParseError::Usage(USAGE_UNICAST_OLD)),
        "ACCESS" => Ok(Command::Files(nonempty(rest.trim()))),
        "DOWNLOAD" => nonempty(rest.trim())
            .map(Command::Download)
            .ok_or(ParseError::Usage(USAGE_DOWNLOAD)),
        "EXIT" => Ok(Command::Quit),
        _ => return None,
    })
}

fn parse_slash(rest: &str) -> Result<Command, ParseError> {
    let (name, args) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(name, args)| (name, args.trim_start()));
    let arg = || nonempty(args.trim());
    match name.to_ascii_lowercase().as_str() {
        "broadcast" | "say" => arg()
            .map(|_| Command::Say(args.to_owned()))
            .ok_or(ParseError::Usage(USAGE_BROADCAST)),
        "msg" => two_words(args)
            .map(|(to, text)| Command::Msg { to, text })
            .ok_or(ParseError::Usage(USAGE_MSG)),
        "unicast" => two_words(args)
            .map(|(to, text)| Command::Msg { to, text })
            .ok_or(ParseError::Usage(USAGE_UNICAST)),
        "users" | "online" | "who" => Ok(Command::Users(arg())),
        "join" => arg()
            .map(Command::Join)
            .ok_or(ParseError::Usage(USAGE_JOIN)),
        "part" | "leave" => match args.split_whitespace().count() {
            0 | 1 => Ok(Command::Part(arg())),
            _ => Err(ParseError::Usage(USAGE_PART)),
        },
        "rooms" => Ok(Command::Rooms),
        "quit" | "exit" => Ok(Command::Quit),
        "help" | "?" => Ok(Command::Help),
        "files" | "file" => Ok(Command::Files(arg())),
        "download" => arg()
            .map(Command::Download)
            .ok_or(ParseError::Usage(USAGE_DOWNLOAD)),
        "transfers" => Ok(Command::Transfers),
        "register" => Ok(Command::Register),
        "passwd" | "password" => Ok(Command::Passwd),
        "search" => arg()
            .map(Command::Search)
            .ok_or(ParseError::Usage(USAGE_SEARCH)),
        "history" => {
            let mut words = args.split_whitespace();
            let mut with = None;
            let mut next = words.next();
            if let Some(user) = next.and_then(|w| w.strip_prefix('@')) {
                with = word(user);
                if with.is_none() {
                    return Err(ParseError::Usage(USAGE_HISTORY));
                }
                next = words.next();
            }
            let count = match next.map(str::parse::<usize>) {
                None => None,
                Some(Ok(count)) if count > 0 => Some(count),
                Some(_) => return Err(ParseError::Usage(USAGE_HISTORY)),
            };
            if words.next().is_some() {
                return Err(ParseError::Usage(USAGE_HISTORY));
            }
            Ok(Command::History { with, count })
        }
        "cancel" => args
            .trim()
            .parse()
            .map(Command::Cancel)
            .map_err(|_| ParseError::Usage(USAGE_CANCEL)),
        "upload" => {
            let mut words = args.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(path), folder, None) => Ok(Command::Upload {
                    path: path.to_owned(),
                    folder: folder.map(str::to_owned),
                }),
                _ => Err(ParseError::Usage(USAGE_UPLOAD)),
            }
        }
        _ => Err(ParseError::Unknown(format!("/{name}"))),
    }
}

/// `user message...`: a first word and a non-empty rest.
fn two_words(args: &str) -> Option<(String, String)> {
    let (to, text) = args.trim_start().split_once(char::is_whitespace)?;
    Some((word(to)?, nonempty(text.trim_start())?))
}

fn word(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty() && !text.contains(char::is_whitespace)).then(|| text.to_owned())
}

fn nonempty(text: &str) -> Option<String> {
    (!text.trim().is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    fn usage(line: &str) -> &'static str {
        match parse(line).unwrap() {
            Err(ParseError::Usage(usage)) => usage,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn msg(to: &str, text: &str) -> Command {
        Command::Msg {
            to: to.into(),
            text: text.into(),
        }
    }

    #[test]
    fn every_broadcast_form() {
        assert_eq!(ok("hello there"), Command::Say("hello there".into()));
        assert_eq!(
            ok("/broadcast hello there"),
            Command::Say("hello there".into())
        );
        assert_eq!(
            ok("BROADCAST::hello there"),
            Command::Say("hello there".into())
        );
        assert_eq!(ok("//shrug"), Command::Say("/shrug".into()));
        assert_eq!(ok("a::b is C++"), Command::Say("a::b is C++".into()));
        assert_eq!(usage("/broadcast"), USAGE_BROADCAST);
        assert_eq!(usage("BROADCAST::"), USAGE_BROADCAST);
    }

    #[test]
    fn every_private_form() {
        assert_eq!(ok("/msg bob hi there"), msg("bob", "hi there"));
        assert_eq!(ok("/unicast bob hi there"), msg("bob", "hi there"));
        assert_eq!(ok("@bob hi there"), msg("bob", "hi there"));
        assert_eq!(ok("UNICAST::bob:hi: there"), msg("bob", "hi: there"));
        assert_eq!(ok("/MSG bob hi"), msg("bob", "hi"));
        assert_eq!(usage("UNICAST::bob"), USAGE_UNICAST_OLD);
        assert_eq!(usage("UNICAST::bob:"), USAGE_UNICAST_OLD);
        assert_eq!(usage("UNICAST:::hi"), USAGE_UNICAST_OLD);
        assert_eq!(usage("/msg bob"), USAGE_MSG);
        assert_eq!(usage("/unicast"), USAGE_UNICAST);
        assert_eq!(usage("@bob"), USAGE_AT);
        assert_eq!(usage("@ hi"), USAGE_AT);
    }

    #[test]
    fn presence_rooms_and_leaving() {
        for line in ["/users", "/online", "/who"] {
            assert_eq!(ok(line), Command::Users(None));
        }
        assert_eq!(ok("/who #rust"), Command::Users(Some("#rust".into())));
        assert_eq!(ok("/join rust"), Command::Join("rust".into()));
        assert_eq!(usage("/join"), USAGE_JOIN);
        assert_eq!(ok("/part"), Command::Part(None));
        assert_eq!(ok("/part rust"), Command::Part(Some("rust".into())));
        assert_eq!(usage("/part a b"), USAGE_PART);
        assert_eq!(ok("/rooms"), Command::Rooms);
        for line in ["/quit", "/exit", "EXIT::"] {
            assert_eq!(ok(line), Command::Quit);
        }
        assert_eq!(ok("/help"), Command::Help);
    }

    #[test]
    fn file_commands() {
        assert_eq!(ok("/files"), Command::Files(None));
        assert_eq!(ok("/file"), Command::Files(None));
        assert_eq!(ok("ACCESS::"), Command::Files(None));
        assert_eq!(
            ok("ACCESS::DeepFiles/Deeper"),
            Command::Files(Some("DeepFiles/Deeper".into()))
        );
        assert_eq!(ok("/download a/b.mp4"), Command::Download("a/b.mp4".into()));
        assert_eq!(
            ok("DOWNLOAD::video1.mp4"),
            Command::Download("video1.mp4".into())
        );
        assert_eq!(usage("DOWNLOAD::"), USAGE_DOWNLOAD);
        assert_eq!(
            ok("/upload notes.txt Docs"),
            Command::Upload {
                path: "notes.txt".into(),
                folder: Some("Docs".into())
            }
        );
        assert_eq!(usage("/upload"), USAGE_UPLOAD);
        assert_eq!(ok("/transfers"), Command::Transfers);
        assert_eq!(
            ok("/history"),
            Command::History {
                with: None,
                count: None
            }
        );
        assert_eq!(
            ok("/history 5"),
            Command::History {
                with: None,
                count: Some(5)
            }
        );
        assert_eq!(
            ok("/history @bob 3"),
            Command::History {
                with: Some("bob".into()),
                count: Some(3)
            }
        );
        assert_eq!(usage("/history x"), USAGE_HISTORY);
        assert_eq!(usage("/history 0"), USAGE_HISTORY);
        assert_eq!(usage("/history @"), USAGE_HISTORY);
        assert_eq!(
            ok("/search deploy keys"),
            Command::Search("deploy keys".into())
        );
        assert_eq!(usage("/search"), USAGE_SEARCH);
        assert_eq!(ok("/cancel 3"), Command::Cancel(3));
        assert_eq!(usage("/cancel"), USAGE_CANCEL);
        assert_eq!(usage("/cancel x"), USAGE_CANCEL);
    }

    #[test]
    fn unknown_and_blank() {
        assert_eq!(
            parse("/dance now").unwrap(),
            Err(ParseError::Unknown("/dance".into()))
        );
        assert!(parse("   ").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn help_names_every_form() {
        for form in [
            "/broadcast",
            "BROADCAST::",
            "/msg",
            "/unicast",
            "@<user>",
            "UNICAST::",
            "/users",
            "/online",
            "/who",
            "/join",
            "/part",
            "/rooms",
            "/files",
            "/file",
            "ACCESS::",
            "/download",
            "DOWNLOAD::",
            "/upload",
            "/help",
            "/quit",
            "/exit",
            "EXIT::",
        ] {
            assert!(HELP.contains(form), "/help does not mention {form}");
        }
    }
}
