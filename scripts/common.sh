# Shared by scripts/bench.sh and scripts/fleet.sh (sourced, not run; they set CARGO first):
# where Cargo puts what it builds, and the open-files limit for a run with many sockets.

# Cargo's target directory (CARGO_TARGET_DIR or the package's own), `target` if cargo cannot say.
target_dir() {
    local dir
    dir=$($CARGO metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "${dir:-target}"
}

# raise_nofile WANT ADVICE: raises this shell's open-files limit to WANT; exits with an error
# that ends with ADVICE (what to lower) when the hard limit is below WANT.
raise_nofile() {
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited && $hard -lt $want ]]; then
        echo "error: the hard open-files limit ($hard) is below $want; $2" >&2
        exit 1
    fi
    ulimit -n "$want"
}
