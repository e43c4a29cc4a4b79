# shellcheck shell=bash
# What every node step shares (hosts.sh, apply-config.sh, registries.sh, restore.sh): how it ends.
# pulumi-command shows a failed step as `<exit status>: running "<command>":` and then the step's
# stdout and stderr in the order they arrived. So the first lines after that must be ours: what
# failed, what was rolled back, what to do. A step therefore holds its output until it ends: on
# success it goes out as written (key=value lines on stdout); on failure the summary comes first,
# then everything the step printed, ALL on stderr (stdout and stderr are two streams over SSH:
# which arrives first is not the order they were written in).
# Sent like lib.sh (script_text() puts it in place of the script's `. "$(dirname "$0")/step.sh"`
# line), after it: lib.sh defines me, fail_with (the summary) and cleanup. Reads no parameter of
# its own.

# shellcheck disable=SC2154 # me, failed_*, cleanup: lib.sh
held=""

# hold_output: from here on, stdout and stderr go to files until the step ends (end_step). The
# real ones stay open as fds 3 and 4: a child that outlives the step (a daemon a restart command
# starts) must not get them, or the SSH session stays open until it exits (restart() closes them).
hold_output() {
  if held=$(mktemp -d "${TMPDIR:-/tmp}/registry-mirrors-step.XXXXXX" 2>/dev/null); then
    exec 3>&1 4>&2 >"${held}/out" 2>"${held}/err"
  else
    held=""  # no room for two small files: print as we go
  fi
  trap end_step EXIT
}

end_step() {
  local code=$?
  set +e
  [[ -n $held ]] && exec 1>&3 2>&4 3>&- 4>&-
  if ((code != 0)); then
    {
      echo "${me} FAILED on $(hostname 2>/dev/null) (exit ${code}): ${failed_what:-it stopped at an error it does not expect; the lines below say where}"
      echo "rolled back: ${failed_undone:-nothing}"
      echo "to do: ${failed_todo:-fix what the lines below say, then run pulumi up again}"
      if [[ -n $held ]]; then
        echo "--- ${me} printed:"
        cat "${held}/err" "${held}/out"
      fi
    } >&2
  elif [[ -n $held ]]; then
    cat "${held}/err" >&2
    cat "${held}/out"
  fi
  [[ -n $held ]] && rm -rf "$held"
  ((${#cleanup[@]} == 0)) || rm -rf "${cleanup[@]}"
  exit "$code"
}
