#!/bin/sh
# garage-migrate flip helper: the node side of the simultaneous restart (issue 13 §1).
#
# Staged beside the Garage binary by the migration's stage step (its sha256 checked there and
# again just before the window), run with literal arguments only, one call per node per step:
#
#   garage-migrate-flip [armed] stop   TIMEOUT DBFILE  N STATUS... M SIGNAL... K STOP...
#   garage-migrate-flip         switch TARGET LINK [STAGED LIVE KEEP SOURCE_SHA TARGET_SHA]
#   garage-migrate-flip [armed] start  TIMEOUT VERSION N STATUS... M START...  K STATS...
#
# "armed": the call prints "armed=1" and waits for one line on stdin; anything but a release
# word, or EOF (the controller gone, the connection cut), and it exits 65 having changed
# nothing. An armed stop observes first (already stopped: it says so and exits without
# arming); "go" releases its signal. An armed start arms at once, opened with the stop, before
# its node is down: "go" releases it to observe (already running as VERSION: skipped) and
# start; "go-down" (the controller saw this very node stopped and switched by this window's
# own calls, moments before) releases the start without that observation. The controller
# opens every node's calls before the window and releases them together with one write each:
# the release costs no exec, no login and no observation inside the window (issue 13 §1).
#
# Each argv group is preceded by its word count, so no word (not even "--") is read as a
# separator, and no word is ever evaluated as shell. It does on the node what the controller
# would otherwise poll for over SSH: the stop waits until the service is inactive and nothing
# holds the DB lock (read from /proc/locks, never by taking the lock); the start waits until
# the daemon answers with VERSION. Every line it prints is "key=value ... t=<epoch>".
#
# Exit status: 0 done (or nothing to do), 2 still running TIMEOUT s after the signal (never
# escalated to a kill), 3 stopped but the DB lock is still held, 4 the daemon exited before
# answering, 5 no answer as VERSION in time, 6 a command failed, 65 armed and not released
# (nothing changed), 7 the config is not the plan's
# (switch: LIVE hashes to neither SOURCE_SHA nor TARGET_SHA, or STAGED is not TARGET_SHA; nothing
# was changed), 64 wrong usage.
#
# With its five config arguments, the switch moves garage.toml with the binary: the live config
# (SOURCE_SHA) copied to KEEP with its mode and owner, then the staged 0.8 one (TARGET_SHA)
# renamed over it; a live config that already hashes to TARGET_SHA is left alone (a re-run).
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

now() { date +%s.%N; }
say() { printf '%s t=%s\n' "$1" "$(now)"; }
die() { printf 'error=%s t=%s\n' "$2" "$(now)"; exit "$1"; }
is_count() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
expired() { [ "$(date +%s)" -ge "$1" ]; }

# lock_free DBFILE: 0 when nothing holds a lock on it, 1 when something does, 2 when it is
# missing. /proc/locks names a file MAJ:MIN:INODE, major and minor in hex (fs/locks.c).
lock_free() {
  id=$(stat -L -c '%d %i' "$1" 2>/dev/null) || return 2
  dev=${id% *}; ino=${id#* }
  maj=$(( ((dev >> 8) & 4095) | ((dev >> 32) & ~4095) ))
  min=$(( (dev & 255) | ((dev >> 12) & ~255) ))
  while read -r _n kind rest; do
    [ "$kind" = "->" ] && continue  # a waiter, not a holder
    # shellcheck disable=SC2086 # split on purpose: MODE RW PID MAJ:MIN:INODE START END
    set -f; set -- $rest; set +f
    [ $# -ge 4 ] || continue
    f=$4; fmaj=${f%%:*}; r=${f#*:}; fmin=${r%%:*}; fino=${r#*:}
    case "$fmaj:$fmin:$fino" in *[!0-9a-fA-F:]*|::*) continue ;; esac
    if [ $((0x$fmaj)) -eq "$maj" ] && [ $((0x$fmin)) -eq "$min" ] && [ "$fino" = "$ino" ]; then
      return 1
    fi
  done < /proc/locks
  return 0
}

# groups "$@": check the three count-prefixed argv groups; sets a_n (the first group's count;
# its words are at 2..a_n+1), b_at/b_n and c_at/c_n (the others' count positions and counts).
groups() {
  is_count "${1:-}" || die 64 "group-1"
  a_n=$1
  [ $# -gt $((a_n + 1)) ] || die 64 "group-2"
  b_at=$((a_n + 2)); eval "b_n=\${$b_at}"; is_count "$b_n" || die 64 "group-2"
  c_at=$((b_at + b_n + 1)); [ $# -ge "$c_at" ] || die 64 "group-3"
  eval "c_n=\${$c_at}"; is_count "$c_n" || die 64 "group-3"
  [ $# -eq $((c_at + c_n)) ] || die 64 "trailing"
}

# run_group FIRST COUNT "$@": run the COUNT words found from position FIRST of "$@". Only
# "${N}" references are evaluated, never the words themselves.
run_group() {
  first=$1; count=$2; shift 2
  j=0; refs=""
  while [ "$j" -lt "$count" ]; do refs="$refs \"\${$((first + j))}\""; j=$((j + 1)); done
  eval "set -- $refs"
  "$@"
}
A() { run_group 2 "$a_n" "$@" >/dev/null 2>&1; }
B() { run_group $((b_at + 1)) "$b_n" "$@"; }
C() { run_group $((c_at + 1)) "$c_n" "$@"; }

# wait_go WORD...: an armed call waits here for its release before it acts; sets $word to the
# release word, one of WORD... (a call that is not armed: "go" at once)
wait_go() {
  word=go
  [ "$armed" = 1 ] || return 0
  say "armed=1"
  IFS= read -r word || word=
  for w in "$@"; do [ "$word" = "$w" ] && return 0; done
  die 65 "not-released"
}

[ $# -ge 1 ] || die 64 "usage"
armed=0
if [ "$1" = armed ]; then armed=1; shift; [ $# -ge 1 ] || die 64 "usage"; fi
cmd=$1; shift
[ "$armed" = 1 ] && [ "$cmd" = switch ] && die 64 "usage"
case "$cmd" in
stop)
  [ $# -ge 3 ] || die 64 "usage"
  timeout=$1; dbfile=$2; shift 2
  is_count "$timeout" || die 64 "timeout"
  groups "$@"
  say "begin=stop"
  if ! A "$@"; then
    lock_free "$dbfile"; rc=$?
    [ $rc -eq 2 ] && die 6 "no-db-file"
    if [ $rc -eq 0 ]; then say "result=skipped reason=already-stopped"; exit 0; fi
  fi
  wait_go go
  B "$@" >/dev/null 2>&1 || die 6 "signal-failed"
  say "signalled=1"
  deadline=$(( $(date +%s) + timeout ))
  while A "$@"; do
    expired "$deadline" && die 2 "still-running"
    sleep 0.05
  done
  say "exited=1"
  C "$@" >/dev/null 2>&1 || die 6 "stop-failed"  # idempotent; settles the unit state
  deadline=$(( $(date +%s) + 10 ))
  while :; do
    lock_free "$dbfile"; rc=$?
    [ $rc -eq 0 ] && break
    [ $rc -eq 2 ] && die 6 "no-db-file"
    expired "$deadline" && die 3 "lock-held"
    sleep 0.05
  done
  say "result=done lock=free"
  ;;
switch)
  [ $# -eq 2 ] || [ $# -eq 7 ] || die 64 "usage"
  target=$1; link=$2
  case "$target" in /*) ;; *) die 64 "target" ;; esac
  case "$link" in /*) ;; *) die 64 "link" ;; esac
  want=$(readlink -f -- "$target") && [ -x "$want" ] || die 6 "target-missing"
  conf=none
  if [ $# -eq 7 ]; then
    staged=$3; live=$4; keep=$5; src_sha=$6; dst_sha=$7
    for p in "$staged" "$live" "$keep"; do case "$p" in /*) ;; *) die 64 "config-path" ;; esac; done
    sha() { sha256sum -- "$1" 2>/dev/null | sed -n '1s/ .*//p'; }
    have=$(sha "$live")
    if [ "$have" = "$dst_sha" ]; then
      conf=skipped  # switched already (a re-run after the move)
    elif [ "$have" = "$src_sha" ]; then
      [ "$(sha "$staged")" = "$dst_sha" ] || die 7 "config-staged-mismatch"
      conf=move
    else
      die 7 "config-changed"
    fi
  fi
  cur=$(readlink -f -- "$link" 2>/dev/null || true)
  if [ "$cur" = "$want" ]; then
    bin=skipped
  else
    ln -sfn -- "$target" "$link.garage-migrate.tmp" || die 6 "ln-failed"
    mv -T -- "$link.garage-migrate.tmp" "$link" || die 6 "mv-failed"  # rename(2): atomic
    bin=done
  fi
  if [ "$conf" = move ]; then
    cp -p -- "$live" "$keep" || die 6 "config-keep-failed"  # what a rollback puts back
    mv -T -- "$staged" "$live" || die 6 "config-mv-failed"  # rename(2): atomic
    conf=done
  fi
  if [ "$bin" = skipped ] && [ "$conf" != done ]; then
    say "result=skipped reason=already-points config=$conf"; exit 0
  fi
  say "result=done binary=$bin config=$conf"
  ;;
start)
  [ $# -ge 3 ] || die 64 "usage"
  timeout=$1; version=$2; shift 2
  is_count "$timeout" || die 64 "timeout"
  groups "$@"
  answers() {  # the daemon's first stats line names VERSION; prints that line
    line=$(C "$@" 2>/dev/null | sed -n '/./{p;q;}')
    case "$line" in
      "Garage version: v$version "*|"Garage version: v$version"|"Garage version: $version "*|"Garage version: $version")
        printf '%s\n' "$line"; return 0 ;;
    esac
    return 1
  }
  say "begin=start"
  wait_go go go-down
  if [ "$word" = go ] && A "$@" && line=$(answers "$@"); then
    say "result=skipped reason=already-running"; printf 'version-line=%s\n' "$line"; exit 0
  fi
  B "$@" >/dev/null 2>&1 || die 6 "start-failed"
  say "started=1"
  t0=$(date +%s)
  deadline=$(( t0 + timeout ))
  while :; do
    if line=$(answers "$@"); then say "result=done"; printf 'version-line=%s\n' "$line"; exit 0; fi
    # a unit that already failed (refused start, crash) will not answer: do not wait it out
    if [ $(( $(date +%s) - t0 )) -ge 2 ] && ! A "$@"; then die 4 "exited-before-answering"; fi
    expired "$deadline" && die 5 "no-answer"
    sleep 0.05
  done
  ;;
*)
  die 64 "usage"
  ;;
esac
