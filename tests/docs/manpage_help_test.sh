#!/usr/bin/env bash
# The manual pages and --help list the same commands, options and arguments: stereosctl's top
# level and each command's --help against stereosctl(1), stereos-hostd's --help against
# stereos-hostd(8). Each difference is named, on whichever side it is missing.
#   manpage_help_test.sh STEREOSCTL HOSTD MANDIR   (MANDIR: the rendered pages, man1/ man8/)
set -euo pipefail
stereosctl=$1 hostd=$2 mandir=$3
problems=0
problem() { echo "MISMATCH: $*" >&2; problems=$((problems + 1)); }

# --- What --help says (CLI11's layout) ---------------------------------------------------------

# The first word of each line of one section ("Options:", "Subcommands:") of a --help text;
# "-h,--help" gives -h and --help.
help_section() {
    awk -v want="$1" '
        /^[A-Za-z]+:$/ { in_section = ($0 == want); next }
        /^Usage:/ { in_section = 0 }
        in_section && /^  [^ ]/ { print $1 }' | tr ',' '\n' | grep -v '^$' | sort -u || true
}
# The positional arguments of the Usage line ("[NAME]" gives NAME).
help_positionals() {
    sed -n 's/^Usage: [^ ]* *//p' | head -1 | tr ' ' '\n' | tr -d '[]' |
        grep -vE '^(OPTIONS|SUBCOMMAND|[a-z-]+)?$' || true
}

# --- What a rendered page says (scdoc's roff) --------------------------------------------------

# Every definition term (a text line followed by .RS) as "SECTION<TAB>DEPTH<TAB>TEXT", with
# "COMMAND" set to the depth-0 term it belongs to within COMMANDS.
page_terms() {
    awk '
        /^\.SH / { section = substr($0, 5); gsub(/"/, "", section); depth = 0; previous = ""; next }
        /^\.RS/ { if (previous != "") print section "\t" depth "\t" previous; depth++; previous = ""; next }
        /^\.RE/ { depth--; previous = ""; next }
        /^\./ { previous = ""; next }
        { previous = $0 }' "$1"
}
# The roff font runs of a text as "B word" / "I word" lines, in order.
font_runs() { grep -oE '\\f[BI][^\\]*\\fR' | sed -E 's/^\\f([BI])(.*)\\fR$/\1 \2/' || true; }
# Bold runs that are options ("--socket", "-h").
options_in() { font_runs | awk '$1 == "B" && $2 ~ /^-/ { print $2 }' | sort -u; }
# Italic runs that are not an option's argument: the positional arguments.
positionals_in() {
    font_runs | awk '$1 == "B" { after_option = ($2 ~ /^-/); next }
                     $1 == "I" { if (!after_option) print $2; after_option = 0 }'
}

compare() {  # compare WHAT HELP_LIST PAGE_LIST: names what only one side has
    local what=$1 help_list=$2 page_list=$3 item
    for item in $(comm -23 <(printf '%s\n' $help_list | sort -u) <(printf '%s\n' $page_list | sort -u)); do
        problem "$what: $item is in --help but not in the manual page"
    done
    for item in $(comm -13 <(printf '%s\n' $help_list | sort -u) <(printf '%s\n' $page_list | sort -u)); do
        problem "$what: $item is in the manual page but not in --help"
    done
}

ctl_page=$mandir/man1/stereosctl.1
hostd_page=$mandir/man8/stereos-hostd.8
[ -s "$ctl_page" ] || { echo "FAIL: no rendered $ctl_page" >&2; exit 1; }
[ -s "$hostd_page" ] || { echo "FAIL: no rendered $hostd_page" >&2; exit 1; }
ctl_terms=$(page_terms "$ctl_page")
hostd_terms=$(page_terms "$hostd_page")

# stereosctl: top-level options and the command list.
top_help=$("$stereosctl" --help)
commands_help=$(printf '%s\n' "$top_help" | help_section Subcommands:)
[ -n "$commands_help" ] || { echo "FAIL: no commands in stereosctl --help" >&2; exit 1; }
compare "stereosctl options" "$(printf '%s\n' "$top_help" | help_section Options:)" \
    "$(printf '%s\n' "$ctl_terms" | awk -F'\t' '$1 == "OPTIONS" && $2 == 0 { print $3 }' | options_in)"
command_terms=$(printf '%s\n' "$ctl_terms" | awk -F'\t' '$1 == "COMMANDS" && $2 == 0 { print $3 }')
commands_page=$(printf '%s\n' "$command_terms" | while IFS= read -r term; do
    printf '%s\n' "$term" | font_runs | awk '$1 == "B" { print $2; exit }'
done)
compare "stereosctl commands" "$commands_help" "$commands_page"

# Each command: its options (every command's -h/--help is described once, under OPTIONS) and
# its positional arguments, in order.
checked=0
for command in $commands_help; do
    help=$("$stereosctl" "$command" --help)
    # The command's block: its depth-0 term and the terms nested under it.
    block=$(printf '%s\n' "$ctl_terms" | awk -F'\t' -v c="$command" '
        $1 != "COMMANDS" { next }
        $2 == 0 { split($3, words, " "); inside = (words[1] == "\\fB" c "\\fR") }
        inside && $2 <= 1 { print $2 "\t" $3 }')
    if [ -z "$block" ]; then continue; fi  # reported above as missing from the page
    compare "stereosctl $command options" \
        "$(printf '%s\n' "$help" | help_section Options: | grep -vxE -- '-h|--help')" \
        "$(printf '%s\n' "$block" | cut -f2 | options_in)"
    help_args=$(printf '%s\n' "$help" | help_positionals | tr '\n' ' ')
    page_args=$(printf '%s\n' "$block" | awk -F'\t' '$1 == 0 { print $2 }' | positionals_in | tr '\n' ' ')
    [ "$help_args" = "$page_args" ] ||
        problem "stereosctl $command arguments: --help has '$help_args', the manual page '$page_args'"
    checked=$((checked + 1))
done

# stereos-hostd: its options.
compare "stereos-hostd options" "$("$hostd" --help | help_section Options:)" \
    "$(printf '%s\n' "$hostd_terms" | awk -F'\t' '$1 == "OPTIONS" && $2 == 0 { print $3 }' | options_in)"

if [ "$problems" -gt 0 ]; then
    echo "FAIL: $problems differences between --help and the manual pages" >&2
    exit 1
fi
echo "manual pages match --help: stereosctl's $checked commands with their options and arguments, stereos-hostd's options"
