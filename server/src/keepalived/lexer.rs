//! One line of keepalived.conf as keepalived 2.2 reads it: comments (`#` or `!` to the end of the line,
//! anywhere outside quotes) and words (whitespace-separated; `"` and `'` quote, may sit inside a word and keep
//! the whitespace between them; shell escapes inside quotes; an unquoted `{` or `}` is a token of its own).

/// A token of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(String),
    Open,
    Close,
}

/// The line without its comment (quotes respected).
pub fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#' | '!') => return &line[..i],
            (None, _) => {}
        }
    }
    line
}

/// Splits a (comment-free) line into tokens. An unterminated quote runs to the end of the line.
pub fn tokenize(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    if q == c {
                        break;
                    }
                    if q == '\\' {
                        if let Some(e) = unescape(&mut chars) {
                            word.push(e);
                        }
                    } else {
                        word.push(q);
                    }
                }
            }
            '$' if chars.peek() == Some(&'{') => {
                // `${NAME}` left undefined stays one word, braces and all.
                in_word = true;
                word.push('$');
                for n in chars.by_ref() {
                    word.push(n);
                    if n == '}' {
                        break;
                    }
                }
            }
            '{' | '}' => {
                if in_word {
                    out.push(Token::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
                out.push(if c == '{' { Token::Open } else { Token::Close });
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(Token::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(Token::Word(word));
    }
    out
}

/// The character after a `\` inside quotes: `\a \b \E \f \n \r \t \v`, `\nnn` (octal), `\xXX` (hex), `\cC`
/// (control), anything else is itself.
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    let c = chars.next()?;
    Some(match c {
        'a' => '\x07',
        'b' => '\x08',
        'E' => '\x1b',
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        '0'..='7' => {
            let mut v = c.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match chars.peek().and_then(|d| d.to_digit(8)) {
                    Some(d) => {
                        v = v * 8 + d;
                        chars.next();
                    }
                    None => break,
                }
            }
            char::from_u32(v & 0xff).unwrap_or('?')
        }
        'x' => {
            let mut v: u32 = 0;
            let mut any = false;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(16)) {
                v = (v << 4 | d) & 0xff;
                any = true;
                chars.next();
            }
            if any {
                char::from_u32(v).unwrap_or('?')
            } else {
                'x'
            }
        }
        'c' => {
            let ctl = chars.next()?;
            char::from_u32(ctl.to_ascii_uppercase() as u32 ^ 0x40).unwrap_or('?')
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        tokenize(strip_comment(line))
            .into_iter()
            .map(|t| match t {
                Token::Word(w) => w,
                Token::Open => "{".into(),
                Token::Close => "}".into(),
            })
            .collect()
    }

    #[test]
    fn comments_start_anywhere_outside_quotes() {
        assert_eq!(words("delay_loop 6 # six seconds"), ["delay_loop", "6"]);
        assert_eq!(words("! all of it"), Vec::<String>::new());
        assert_eq!(words("weight 3! three"), ["weight", "3"]);
        assert_eq!(
            words(r#"misc_path "/bin/check #1 !" # x"#),
            ["misc_path", "/bin/check #1 !"]
        );
    }

    #[test]
    fn quotes_join_and_keep_whitespace_and_escapes() {
        // The man page's two examples.
        assert_eq!(words(r#"abcd" efg h jkl "mnop"#), ["abcd efg h jkl mnop"]);
        assert_eq!(
            words(r#"abcd "efg h jkl" mnop"#),
            ["abcd", "efg h jkl", "mnop"]
        );
        assert_eq!(
            words(r#"'a\tb' "q\"x" "\x41\101\cA""#),
            ["a\tb", "q\"x", "AA\x01"]
        );
        assert_eq!(
            words(r#""unterminated to the end"#),
            ["unterminated to the end"]
        );
    }

    #[test]
    fn braces_are_tokens_unless_quoted() {
        assert_eq!(
            words("virtual_server 198.18.0.10 80{"),
            ["virtual_server", "198.18.0.10", "80", "{"]
        );
        assert_eq!(words("a { b } c"), ["a", "{", "b", "}", "c"]);
        assert_eq!(words(r#"x "{""#), ["x", "{"]);
        assert_eq!(tokenize(r#"x "{""#)[1], Token::Word("{".into()));
    }
}
