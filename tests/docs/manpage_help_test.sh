#!/usr/bin/env bash
# The manual pages and --help list the same commands, options and arguments: stereosctl's top
# level and each command's --help against stereosctl(1), stereos-hostd's --help against
# stereos-hostd(8). Each difference is named, on whichever side it is missing.
#   manpage_help_test.sh STEREOSCTL HOSTD MANDIR   (MANDIR: the rendered pages, man1/ man8/)
#
# Both sides are reduced to lines such as "stereosctl command ls", "stereosctl secret option
# --mode" and "stereosctl secret arguments NAME SECRET_NAME", then compared.
set -euo pipefail
stereosctl=$1 hostd=$2 mandir=$3

# From a CLI11 --help text: its options ("-h,--help" gives -h and --help), its subcommands, and
# the positional arguments of its Usage line ("[NAME]" gives NAME). PREFIX starts each line;
# SKIP_HELP leaves out -h/--help (every stereosctl command has them, described once in OPTIONS).
help_items() {  # help_items PREFIX SKIP_HELP
    awk -v prefix="$1" -v skip_help="$2" '
        /^Usage:/ {
            arguments = ""
            for (i = 3; i <= NF; i++) {
                word = $i; gsub(/[][]/, "", word)
                if (word != "OPTIONS" && word != "SUBCOMMAND" && word != "" && (i > 3 || word !~ /^[a-z-]+$/))
                    arguments = arguments " " word
            }
            next
        }
        /^[A-Za-z]+:$/ { section = $0; next }
        /^  [^ ]/ && section == "Options:" {
            n = split($1, names, ",")
            for (i = 1; i <= n; i++)
                if (!(skip_help && (names[i] == "-h" || names[i] == "--help")))
                    print prefix " option " names[i]
        }
        /^  [^ ]/ && section == "Subcommands:" { print prefix " command " $1 }
        END { if (skip_help) print prefix " arguments" arguments }'
}

# From a page rendered by scdoc: the options named in the depth-0 definition terms of OPTIONS;
# with COMMANDS, each depth-0 term there is a command ("\fBsecret\fR \fINAME\fR ..."): its
# italic words not right after an option are its arguments, and the options in its term and in
# the terms nested one level under it are its options.
page_items() {  # page_items PREFIX PAGE
    awk -v prefix="$1" '
        function runs(text, kinds, words,    n, run) {
            n = 0
            while (match(text, /\\f[BI][^\\]*\\fR/)) {
                run = substr(text, RSTART, RLENGTH)
                n++; kinds[n] = substr(run, 3, 1); words[n] = substr(run, 4, length(run) - 6)
                text = substr(text, RSTART + RLENGTH)
            }
            return n
        }
        function term(text, depth,    n, i, kinds, words, after_option, arguments) {
            n = runs(text, kinds, words)
            if (section == "OPTIONS" && depth == 0) {
                for (i = 1; i <= n; i++) if (kinds[i] == "B" && words[i] ~ /^-/) print prefix " option " words[i]
            }
            if (section != "COMMANDS") return
            if (depth == 0) {
                command = (n > 0 && kinds[1] == "B") ? words[1] : ""
                if (command == "") return
                print prefix " command " command
                arguments = ""
                for (i = 2; i <= n; i++) {
                    if (kinds[i] == "B") { after_option = (words[i] ~ /^-/); continue }
                    if (!after_option) arguments = arguments " " words[i]
                    after_option = 0
                }
                print prefix " " command " arguments" arguments
            }
            if (command != "" && depth <= 1)
                for (i = 1; i <= n; i++) if (kinds[i] == "B" && words[i] ~ /^-/) print prefix " " command " option " words[i]
        }
        /^\.SH / { section = substr($0, 5); gsub(/"/, "", section); depth = 0; previous = ""; command = ""; next }
        /^\.RS/ { if (previous != "") term(previous, depth); depth++; previous = ""; next }
        /^\.RE/ { depth--; previous = ""; next }
        /^\./ { previous = ""; next }
        { previous = $0 }' "$2"
}

for page in "$mandir/man1/stereosctl.1" "$mandir/man8/stereos-hostd.8"; do
    [ -s "$page" ] || { echo "FAIL: no rendered page $page" >&2; exit 1; }
done
top_help=$("$stereosctl" --help)
commands=$(printf '%s\n' "$top_help" | awk '/^[A-Za-z]+:$/ { s = $0; next } s == "Subcommands:" && /^  [^ ]/ { print $1 }')
[ -n "$commands" ] || { echo "FAIL: stereosctl --help lists no commands" >&2; exit 1; }
help_list=$(
    printf '%s\n' "$top_help" | help_items stereosctl 0 | grep -v ' arguments'
    for command in $commands; do "$stereosctl" "$command" --help | help_items "stereosctl $command" 1; done
    "$hostd" --help | help_items stereos-hostd 0 | grep -v ' arguments'
)
page_list=$(page_items stereosctl "$mandir/man1/stereosctl.1"; page_items stereos-hostd "$mandir/man8/stereos-hostd.8")

help_only=$(comm -23 <(printf '%s\n' "$help_list" | sort -u) <(printf '%s\n' "$page_list" | sort -u))
page_only=$(comm -13 <(printf '%s\n' "$help_list" | sort -u) <(printf '%s\n' "$page_list" | sort -u))
if [ -n "$help_only$page_only" ]; then
    [ -z "$help_only" ] || printf 'in --help, not in the manual page: %s\n' "$help_only" | sed '2,$s/^/    /' >&2
    [ -z "$page_only" ] || printf 'in the manual page, not in --help: %s\n' "$page_only" | sed '2,$s/^/    /' >&2
    echo "FAIL: --help and the manual pages differ" >&2
    exit 1
fi
echo "manual pages match --help: $(printf '%s\n' "$help_list" | wc -l) items" \
    "($(printf '%s\n' "$commands" | wc -w) stereosctl commands with their options and arguments," \
    "stereosctl's and stereos-hostd's options)"
