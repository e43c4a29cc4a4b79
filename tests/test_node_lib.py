"""The file protocol of scripts/node/lib.sh and how a step ends (step.sh), run as a step sends it
(stdin_command: the script on stdin, nothing of ours beside it), with stand-ins for the daemon: a
restart command that counts, a ctr that says the CRI plugin is ok, or one that refuses a change
(exit 5) or never recovers (exit 6). What the real daemons add (config dump, rollback with their
own error texts, pulls) is in tests/integration/test_node_e2e.py and test_k3s_e2e.py."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from pathlib import Path

import pytest

from components.renderers.shell import stdin_command

OK_CTR = "#!/bin/sh\necho 'TYPE ID PLATFORMS STATUS'\necho 'io.containerd.grpc.v1 cri - ok'\n"


def run_sent(
    command: str, cwd: Path, stdin: str = "", uid: int = 0
) -> subprocess.CompletedProcess[str]:
    """As on the node: the command from a directory holding nothing of ours. `id` is faked so the
    root check passes or fails whoever runs the test."""
    fake_id = f"id() {{ echo {uid}; }}; export -f id\n"
    return subprocess.run(
        ["bash", "-c", fake_id + command],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def run_step(
    script: str,
    params: dict[str, str | int | bool],
    cwd: Path,
    content: str = "",
    uid: int = 0,
    env: str = "",
) -> subprocess.CompletedProcess[str]:
    """``scripts/node/<script>.sh`` as a step sends it: the short command, the script on stdin
    and then ``content``; ``env``: lines run before it (stand-ins on PATH)."""
    command, text = stdin_command(f"node/{script}.sh", params)
    return run_sent(env + command, cwd, text + content, uid)


def summary_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The first three lines of a failed step: what pulumi-command shows right after the
    command (the step prints nothing on stdout then: the order of two streams is not kept)."""
    assert result.returncode != 0 and result.stdout == "", result.stdout
    return result.stderr.splitlines()[:3]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Node:
    """registries.sh (the library's file machinery, no containerd needed) on a file in tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "rancher" / "registries.yaml"
        self.restarts = root / "restarts"
        ctr = root / "ctr"
        ctr.write_text(OK_CTR)
        ctr.chmod(0o755)
        self.params: dict[str, str | int | bool] = {
            "REGISTRIES_FILE": str(self.file),
            "RESTART_COMMAND": f"echo restart >>{self.restarts}",
            "RESTART_TIMEOUT": 5,
            "CONTAINERD_ADDRESS": str(root / "no.sock"),
            "CTR": str(ctr),
        }

    def apply(self, guard: str, text: str, mark: str = "m1") -> subprocess.CompletedProcess[str]:
        params = {**self.params, "EXPECTED_SHA256": guard, "APPLY_MARK": mark}
        return run_step("registries", params, self.root, text)

    def delete(self) -> subprocess.CompletedProcess[str]:
        return run_step("registries", {**self.params, "RESTORE": 1}, self.root)

    def beside(self, suffix: str) -> Path:
        return self.file.parent / f"registries.yaml.registry-mirrors.{suffix}"

    def left(self) -> list[str]:
        return sorted(p.name for p in self.file.parent.iterdir())

    def restart_count(self) -> int:
        return len(self.restarts.read_text().splitlines()) if self.restarts.exists() else 0


FIRST, SECOND = "mirrors: {}\n", "mirrors: {docker.io: {}}\n"


def test_a_new_file_is_0600_a_changed_one_keeps_its_mode_and_delete_removes_it(
    tmp_path: Path,
) -> None:
    """It may hold registry credentials. No file at first: after two changes, delete leaves no
    file and no mark of ours (not the file of our first change, as it did before)."""
    node = Node(tmp_path)
    first = node.apply("absent", FIRST)
    assert first.stdout == "changed=1\nbackup=\nrestarted=1\nrolled_back=0\n", first.stderr
    assert node.file.stat().st_mode & 0o777 == 0o600
    assert node.beside("applied").read_text() == f"{sha256(FIRST)} absent m1\n"
    assert node.beside("absent").exists()

    node.file.chmod(0o640)
    second = node.apply(sha256(FIRST), SECOND, mark="m2")
    assert second.returncode == 0, second.stderr
    (backup,) = node.file.parent.glob("registries.yaml.registry-mirrors.2*")  # a UTC stamp
    assert f"backup={backup}\n" in second.stdout
    assert backup.read_text() == FIRST
    assert node.file.read_text() == SECOND and node.file.stat().st_mode & 0o777 == 0o640
    assert node.beside("applied").read_text() == f"{sha256(SECOND)} {sha256(FIRST)} m2\n"
    assert node.restart_count() == 2
    assert not node.beside("orig").exists()

    delete = node.delete()
    assert delete.stdout == "restored=1\nrestarted=1\n", delete.stderr
    assert not node.file.exists()
    assert node.left() == [backup.name, "registries.yaml.registry-mirrors.before-restore"]
    assert node.beside("before-restore").read_text() == SECOND


def test_delete_on_a_node_left_with_both_marks_goes_by_the_absent_one(tmp_path: Path) -> None:
    """What the scripts left before: .absent, and an .orig that is our own first change."""
    node = Node(tmp_path)
    node.file.parent.mkdir()
    node.file.write_text(SECOND)
    node.beside("orig").write_text(FIRST)
    node.beside("absent").write_text("")
    delete = node.delete()
    assert delete.stdout == "restored=1\nrestarted=1\n", delete.stderr
    assert node.left() == ["registries.yaml.registry-mirrors.before-restore"]


def test_identical_text_is_a_no_op_whatever_the_guard_and_an_edit_is_refused(
    tmp_path: Path,
) -> None:
    """The guard of an unchanged node is the checksum of the file it was made from, not of what
    is on disk: identical text must be looked at first. It is still recorded, with the mark it
    was sent (the next probe plans these very inputs again)."""
    node = Node(tmp_path)
    node.apply("absent", FIRST)
    before = node.left()
    again = node.apply("absent", FIRST, mark="m9")
    assert (again.returncode, again.stdout) == (0, "changed=0\nrestarted=0\n"), again.stderr
    assert node.restart_count() == 1 and node.left() == before
    assert node.beside("applied").read_text() == f"{sha256(FIRST)} absent m9\n"

    edited = node.apply("absent", SECOND)
    assert edited.returncode == 3
    assert summary_of(edited) == [
        f"registries.sh FAILED on {socket.gethostname()} (exit 3): {node.file} changed since "
        "the program read it",
        "rolled back: nothing: nothing was changed",
        "to do: run pulumi up again (it reads the node again and plans from what is there now)",
    ]
    assert edited.stderr.endswith(
        f"registries.sh: {node.file} changed since it was probed (expected sha256 absent, now "
        f"{sha256(FIRST)}); nothing changed, run pulumi up again\n"
    )
    assert node.file.read_text() == FIRST and node.left() == before


@pytest.mark.parametrize(("uid", "code", "stdout", "stderr"), [
    (1000, 2, "", "restore.sh: must run as root (log in as root"),
    (0, 0, "restored=0\nrestarted=0\n", ""),
])  # fmt: skip
def test_the_sent_command_runs_with_no_file_of_ours_beside_it(
    tmp_path: Path, uid: int, code: int, stdout: str, stderr: str
) -> None:
    """The library's functions run, and its root check names the script from $0."""
    params: dict[str, str | int | bool] = {
        "CONFIG_FILE": str(tmp_path / "config.toml"),
        "RESTART_COMMAND": "false",
    }
    result = run_step("restore", params, tmp_path, uid=uid)
    assert (result.returncode, result.stdout) == (code, stdout), result.stderr
    assert stderr in result.stderr if stderr else result.stderr == ""
    if code:
        assert summary_of(result)[0].endswith("(exit 2): it must run as root")
    # Nothing of the step is left behind (its held output, its temporary files).
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_restore_whose_restart_fails_exits_5_quoting_the_restart_command(tmp_path: Path) -> None:
    """The delete step shared by restore.sh and registries.sh RESTORE=1: the original is back, and
    a failing restart is reported as such (its exit code could read as ssh's 255 otherwise)."""
    config = tmp_path / "config.toml"
    config.write_text("ours\n")
    (tmp_path / "config.toml.registry-mirrors.orig").write_text("theirs\n")
    (tmp_path / "config.toml.registry-mirrors.applied").write_text("a b\n")
    params: dict[str, str | int | bool] = {
        "CONFIG_FILE": str(config),
        "RESTART_COMMAND": "echo Unit containerd.service not found. >&2; exit 255",
    }
    result = run_step("restore", params, tmp_path)
    assert result.returncode == 5, result.stderr
    first = summary_of(result)
    assert first[0].endswith(
        f"(exit 5): {config} was restored, but the CRI plugin on "
        "/run/containerd/containerd.sock is not ok after the restart"
    )
    assert first[1].startswith(f"rolled back: nothing: the original {config} stays in place")
    assert "restored=1\n" in result.stderr
    assert f"restore.sh: {config} was restored but the CRI plugin on" in result.stderr
    assert "restart command output: Unit containerd.service not found." in result.stderr
    assert config.read_text() == "theirs\n"
    assert (tmp_path / "config.toml.registry-mirrors.before-restore").read_text() == "ours\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.toml",
        "config.toml.registry-mirrors.before-restore",
    ]


# --- a change the daemon refuses: rolled back (exit 5), or the rollback fails too (exit 6) -----

# A stand-in daemon for both scripts: `containerd config dump` accepts any file; `ctr plugins ls`
# says the CRI plugin is in error while the daemon's file holds BREAKS (a change it refuses) or
# once a restart left the daemon broken for good (DEAD exists); `--detailed` gives its message.
FAKE_CTR = """#!/bin/sh
if [ -e "$DEAD" ] || grep -q BREAKS "$WATCHED" 2>/dev/null; then state=error; else state=ok; fi
case "$*" in
  *"plugins ls --detailed"*) echo "Type: io.containerd.grpc.v1"; echo "ID: cri"
    echo "  Message: invalid plugin config: the stand-in refuses this file" ;;
  *"plugins ls"*) echo 'TYPE ID PLATFORMS STATUS'; echo "io.containerd.grpc.v1 cri - $state" ;;
  *) exit 1 ;;
esac
"""


# `cp` that copies half of a source matching $FAIL_CP_FROM and fails (a full disk, a dropped
# session); any other copy is the real one.
FAKE_CP = """#!/usr/bin/env bash
src=${*: -2:1} dst=${*: -1}
case "$src" in $FAIL_CP_FROM) head -c 5 "$src" >"$dst"; exit 1 ;; esac
exec /bin/cp "$@"
"""


def failing_node(
    tmp_path: Path,
    script: str,
    break_for_good: bool,
    fail_cp_from: str = "/nothing",
    mark: str = "",
) -> tuple[Path, str, str]:
    """A node whose daemon refuses BREAKS; with ``break_for_good`` the first restart also leaves
    it broken whatever the file says (so the rollback cannot bring it back); copies from a path
    matching the glob ``fail_cp_from`` fail halfway."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = (("ctr", FAKE_CTR), ("containerd", "#!/bin/sh\nexit 0\n"), ("cp", FAKE_CP))
    for name, text in tools:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    file = tmp_path / ("config.toml" if script == "apply-config" else "registries.yaml")
    file.write_text("works\n")
    restart = f"echo restart >>{tmp_path / 'restarts'}"
    if break_for_good:
        restart += f"; touch {tmp_path / 'dead'}"
    params: dict[str, str | int | bool] = {
        "EXPECTED_SHA256": sha256("works\n"),
        "RESTART_COMMAND": restart,
        "RESTART_TIMEOUT": 5,
        "CONTAINERD_ADDRESS": str(tmp_path / "no.sock"),
        "APPLY_MARK": mark,
    }
    if script == "apply-config":
        params["CONFIG_FILE"] = str(file)
    else:
        params |= {"REGISTRIES_FILE": str(file), "CTR": str(bin_dir / "ctr")}
    env = (
        f"export PATH={bin_dir}:$PATH WATCHED={file} DEAD={tmp_path / 'dead'} "
        f"FAIL_CP_FROM='{fail_cp_from}'\n"
    )
    command, text = stdin_command(f"node/{script}.sh", params)
    return file, env + command, text


def run_failing(
    node: tuple[Path, str, str], cwd: Path, content: str
) -> subprocess.CompletedProcess[str]:
    _, command, script = node
    return run_sent(command, cwd, script + content)


@pytest.mark.parametrize("script", ["apply-config", "registries"])
def test_a_change_the_daemon_refuses_is_rolled_back_and_exits_5(
    tmp_path: Path, script: str
) -> None:
    node = failing_node(tmp_path, script, break_for_good=False)
    file = node[0]
    result = run_failing(node, tmp_path, "BREAKS\n")
    assert result.returncode == 5, result.stderr
    what, undone, todo = summary_of(result)
    assert what.startswith(f"{script}.sh FAILED on ") and f"(exit 5): with the new {file} " in what
    assert undone == (
        f"rolled back: the previous {file} is back in place and the CRI plugin on "
        f"{tmp_path / 'no.sock'} is ok again"
    )
    assert todo.startswith("to do: fix what ") and "nodes[].state: held" in todo
    # Then everything it printed, its own words and its key=value lines, on stderr.
    assert result.stderr.splitlines()[3] == f"--- {script}.sh printed:"
    assert "rolled_back=1" in result.stderr
    assert file.read_text() == "works\n"
    assert "the previous" in result.stderr and "NOT ok" not in result.stderr
    # Two restarts: into the change, and back into the previous file.
    assert (tmp_path / "restarts").read_text().count("restart") == 2
    assert not (tmp_path / f"{file.name}.registry-mirrors.applied").exists()


@pytest.mark.parametrize("script", ["apply-config", "registries"])
def test_a_rollback_the_daemon_does_not_recover_from_exits_6_with_the_file_restored(
    tmp_path: Path, script: str
) -> None:
    """The worst case must still leave the previous file in place (nothing lost) and say loudly
    that the node is NOT ok: exit 6, never 5 (which means "rolled back, the node is fine")."""
    node = failing_node(tmp_path, script, break_for_good=True)
    file = node[0]
    result = run_failing(node, tmp_path, "fine too\n")
    assert result.returncode == 6, result.stderr
    _, undone, todo = summary_of(result)
    assert undone.startswith(f"rolled back: the previous {file} is back in place, but the CRI")
    assert "is NOT ok with it either" in undone
    assert todo.startswith("to do: the node needs a person now")
    assert "rolled_back=1" in result.stderr
    assert file.read_text() == "works\n"
    (not_ok,) = [line for line in result.stderr.splitlines()[3:] if "NOT ok" in line]
    assert not_ok.startswith(f"{script}.sh: ")
    assert (tmp_path / f"{file.name}.registry-mirrors.orig").read_text() == "works\n"
    assert not (tmp_path / f"{file.name}.registry-mirrors.applied").exists()


@pytest.mark.parametrize("script", ["apply-config", "registries"])
def test_a_rollback_that_cannot_put_the_file_back_exits_6_and_does_not_claim_it(
    tmp_path: Path, script: str
) -> None:
    """The previous file cannot be copied back (e.g. a full disk): not exit 1 with
    ``rolled_back=1`` printed before the attempt, but exit 6, ``rolled_back=0``, and the words."""
    node = failing_node(
        tmp_path, script, break_for_good=False, fail_cp_from="*.registry-mirrors.2*"
    )
    file = node[0]
    result = run_failing(node, tmp_path, "BREAKS\n")
    assert result.returncode == 6, result.stderr
    _, undone, _ = summary_of(result)
    assert undone.startswith(f"rolled back: NOTHING: the previous {file} could NOT be put back")
    assert "rolled_back=0" in result.stderr and "rolled_back=1" not in result.stderr
    assert "could NOT be put back" in result.stderr
    assert file.read_text() == "BREAKS\n"  # what is on the node, said as it is
    assert not list(tmp_path.glob(f".{file.name}.registry-mirrors.*")), "a temporary file left"


@pytest.mark.parametrize("script", ["apply-config", "registries"])
def test_a_copy_of_the_original_that_fails_midway_leaves_no_half_original(
    tmp_path: Path, script: str
) -> None:
    """The saved original is the only lasting copy of the user's file and what delete restores:
    a copy that fails halfway must leave none (the next run saves it whole), never a truncated
    one that later runs would take for the original."""
    name = "config.toml" if script == "apply-config" else "registries.yaml"
    file, command, text = failing_node(
        tmp_path, script, break_for_good=False, fail_cp_from=f"*/{name}"
    )
    failed = run_sent(command, tmp_path, text + "fine too\n")
    assert failed.returncode != 0
    # An error the script does not expect still comes with a summary first.
    assert summary_of(failed)[0].endswith(
        "it stopped at an error it does not expect; the lines below say where"
    )
    assert file.read_text() == "works\n"
    assert sorted(p.name for p in tmp_path.glob(f"*{file.name}*")) == [file.name]

    again = run_sent(command.replace(f"*/{name}", "/nothing"), tmp_path, text + "fine too\n")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / f"{file.name}.registry-mirrors.orig").read_text() == "works\n"


def test_a_restart_that_never_returns_is_stopped_at_the_time_limit(tmp_path: Path) -> None:
    """k3s/RKE2 units are Type=notify, often without a start timeout: `systemctl restart` can
    hang. The restart gets RESTART_TIMEOUT and is then a failed restart (here the delete step's:
    exit 5, saying so). Without the limit this test would hang until its own timeout."""
    config = tmp_path / "config.toml"
    config.write_text("ours\n")
    (tmp_path / "config.toml.registry-mirrors.orig").write_text("theirs\n")
    command, script = stdin_command(
        "node/restore.sh",
        {"CONFIG_FILE": str(config), "RESTART_COMMAND": "sleep 600", "RESTART_TIMEOUT": 1},
    )
    result = subprocess.run(
        ["bash", "-c", "id() { echo 0; }; export -f id\n" + command],
        cwd=tmp_path,
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 5, result.stderr
    assert summary_of(result)[0].endswith("is not ok after the restart")
    assert "restored=1\n" in result.stderr
    assert "the restart command did not return within 1s and was stopped" in result.stderr


# --- what a step leaves, read back by the probe (issue 27: drift in any direction) ---------------


def probe(tmp_path: Path, config: Path, config_path: Path) -> dict[str, str]:
    """probe.sh's key=value lines for a node whose files are under tmp_path (containerd: a
    stand-in that only knows its version)."""
    from components.plan.node_probe import parse_key_values
    from components.renderers.shell import remote_command

    bin_dir = tmp_path / "probe-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "containerd").write_text("#!/bin/sh\necho containerd x v1.7.24 abc\n")
    (bin_dir / "containerd").chmod(0o755)
    command = remote_command(
        "node/probe.sh", {"CONFIG_FILE": str(config), "CONFIG_PATH": str(config_path)}
    )
    result = run_sent(f"export PATH={bin_dir}:$PATH\n{command}", tmp_path)
    assert result.returncode == 0, result.stderr
    return {key: values[-1] for key, values in parse_key_values(result.stdout).items()}


def test_hosts_sh_records_what_it_left_and_the_probe_checks_it(tmp_path: Path) -> None:
    config_path = tmp_path / "certs.d"
    bundle = (
        "# registry-mirrors: docker.io/hosts.toml\nserver = 'a'\n"
        "# registry-mirrors: ghcr.io/hosts.toml\nserver = 'b'\n"
    )
    params: dict[str, str | int | bool] = {"CONFIG_PATH": str(config_path), "APPLY_MARK": "m1"}
    written = run_step("hosts", params, tmp_path, bundle)
    assert written.returncode == 0, written.stderr
    record = config_path / ".registry-mirrors-applied"
    a, b = sha256("server = 'a'\n"), sha256("server = 'b'\n")
    assert record.read_text() == f"mark m1\n{a}  docker.io/hosts.toml\n{b}  ghcr.io/hosts.toml\n"
    config = tmp_path / "config.toml"
    left = probe(tmp_path, config, config_path)
    assert left["hosts_applied_mark"] == "m1"
    assert left["hosts_applied_record_sha256"] == sha256(record.read_text())

    # Any direction: a file edited, or gone (our own restore, a config manager wiping certs.d).
    hosts = config_path / "ghcr.io" / "hosts.toml"
    for change in (lambda: hosts.write_text("server = 'c'\n"), hosts.unlink):
        change()
        drifted = probe(tmp_path, config, config_path)
        assert "hosts_applied_mark" not in drifted
        assert drifted["hosts_applied_record_sha256"] == left["hosts_applied_record_sha256"]
    # Written again with a new mark: as left, and that mark.
    assert run_step("hosts", {**params, "APPLY_MARK": "m2"}, tmp_path, bundle).returncode == 0
    assert probe(tmp_path, config, config_path)["hosts_applied_mark"] == "m2"

    removed = run_step("hosts", {**params, "REMOVE_ALL": 1}, tmp_path, bundle)
    assert removed.returncode == 0, removed.stderr
    assert not record.exists() and not (config_path / "docker.io").exists()
    assert "hosts_applied_record_sha256" not in probe(tmp_path, config, config_path)


def test_the_probe_gives_the_mark_back_only_while_the_file_is_what_the_step_left(
    tmp_path: Path,
) -> None:
    """apply-config.sh records what it left; back to the original (a config manager, a restore by
    hand) the probe no longer gives the guard and mark back, only the record's checksum."""
    file, command, text = failing_node(tmp_path, "apply-config", break_for_good=False, mark="m1")
    config_path = tmp_path / "certs.d"
    applied = run_sent(command, tmp_path, text + "migrated\n")
    assert applied.returncode == 0, applied.stderr
    record = tmp_path / "config.toml.registry-mirrors.applied"
    assert record.read_text() == f"{sha256('migrated' + chr(10))} {sha256('works' + chr(10))} m1\n"

    left = probe(tmp_path, file, config_path)
    assert (left["config_applied_from_sha256"], left["config_applied_mark"]) == (
        sha256("works\n"),
        "m1",
    )
    assert left["config_applied_record_sha256"] == sha256(record.read_text())

    file.write_text("works\n")  # back to the original
    reverted = probe(tmp_path, file, config_path)
    assert reverted["config_applied_from_sha256"] == ""
    assert reverted["config_applied_mark"] == ""
    assert reverted["config_applied_record_sha256"] == left["config_applied_record_sha256"]


# --- control-plane nodes: healthy as a cluster member (issue 27, item 4) --------------------------


def _member(root: Path, script: str) -> Path:
    """A HEALTH_COMMAND stand-in whose answer the test sets: `ok` in ``answer`` is healthy."""
    answer = root / "answer"
    check = root / "member-check"
    check.write_text(f'#!/bin/sh\necho "{script}: $(cat {answer})"\ngrep -qx ok {answer}\n')
    check.chmod(0o755)
    return answer


def test_a_server_that_does_not_become_healthy_again_is_rolled_back(tmp_path: Path) -> None:
    """CRI answers, but the node is not back in the cluster within HEALTH_TIMEOUT: the change is
    a failed one (exit 5, previous file back, a restart with it, healthy again)."""
    node = Node(tmp_path)
    answer = _member(tmp_path, "readyz")
    answer.write_text("ok\n")
    # The restart of the new file leaves the member unhealthy; the rollback's restart heals it.
    node.params.update(
        HEALTH_COMMAND=str(tmp_path / "member-check"),
        HEALTH_TIMEOUT=2,
        RESTART_COMMAND=(
            f"echo restart >>{node.restarts}; "
            f"if [ $(wc -l <{node.restarts}) -eq 2 ]; then echo '[-]etcd failed' >{answer}; "
            f"else echo ok >{answer}; fi"
        ),
    )
    assert node.apply("absent", FIRST).returncode == 0
    result = node.apply(sha256(FIRST), SECOND)
    assert result.returncode == 5, result.stderr
    what, undone, todo = summary_of(result)
    assert what.endswith("the node did not become healthy as a cluster member within 2s")
    assert undone.startswith("rolled back: the previous") and "is ok again" in undone
    assert "cluster health" in todo
    assert "rolled_back=1" in result.stderr
    assert "did not become healthy as a cluster member within 2s" in result.stderr
    assert "readyz: [-]etcd failed" in result.stderr
    assert node.file.read_text() == FIRST
    assert node.restart_count() == 3


def test_a_server_that_is_not_healthy_before_the_change_is_not_touched(tmp_path: Path) -> None:
    node = Node(tmp_path)
    answer = _member(tmp_path, "readyz")
    answer.write_text("[-]etcd failed\n")
    node.params.update(HEALTH_COMMAND=str(tmp_path / "member-check"), HEALTH_TIMEOUT=10)
    result = node.apply("absent", FIRST)
    assert result.returncode == 7, result.stderr
    what, undone, _ = summary_of(result)
    assert "not healthy as a cluster member before the change" in what
    assert undone == "rolled back: nothing: nothing was changed"
    assert "not healthy as a cluster member before the change" in result.stderr
    assert "nothing changed" in result.stderr
    assert not node.file.exists() and node.restart_count() == 0
    # Control: healthy, the same step goes through and waits for the member after the restart.
    answer.write_text("ok\n")
    assert node.apply("absent", FIRST).returncode == 0
    assert node.restart_count() == 1


# --- hosts.sh: directories of a previous config_path carried (issue 27, item 5) ----------------


def _digest(directory: Path) -> str:
    """lib.sh dir_digest: sha256 over "<name> <sha256>" lines, names in byte order."""
    lines = "".join(
        f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted(directory.iterdir(), key=lambda p: p.name.encode())
        if p.is_file() and not p.name.startswith(".")
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def test_hosts_sh_carries_a_directory_and_lets_go_of_it(tmp_path: Path) -> None:
    source = tmp_path / "docker-certs.d" / "registry.corp:5443"
    source.mkdir(parents=True)
    (source / "ca.crt").write_text("CA\n")
    (source / "client.key").write_text("KEY\n")
    (source / "client.key").chmod(0o600)
    (source / "hosts.toml").write_text('server = "https://registry.corp:5443"\n')
    ours = tmp_path / "certs.d"
    carry = f"{_digest(source)} registry.corp:5443 {source}\n"
    params: dict[str, str | int | bool] = {"CONFIG_PATH": str(ours), "CARRY": carry}

    first = run_step("hosts", params, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "written=registry.corp:5443" in first.stdout
    copy = ours / "registry.corp:5443"
    assert sorted(p.name for p in copy.iterdir()) == [
        ".registry-mirrors-carried", "ca.crt", "client.key", "hosts.toml",
    ]  # fmt: skip
    assert (copy / "client.key").stat().st_mode & 0o777 == 0o600
    assert (ours / ".registry-mirrors-managed").read_text() == "registry.corp:5443\n"
    again = run_step("hosts", params, tmp_path)
    assert "unchanged=registry.corp:5443" in again.stdout and "changed=0" in again.stdout

    # The source changed since the probe: nothing is written.
    (source / "ca.crt").write_text("ANOTHER CA\n")
    stale = run_step("hosts", params, tmp_path)
    assert stale.returncode == 3 and "changed since it was probed" in stale.stderr
    assert summary_of(stale)[0].endswith("changed since the program read it")
    assert (copy / "ca.crt").read_text() == "CA\n"

    delete = run_step("hosts", {"CONFIG_PATH": str(ours), "REMOVE_ALL": 1}, tmp_path)
    assert delete.returncode == 0, delete.stderr
    assert "removed=registry.corp:5443" in delete.stdout
    assert not copy.exists() and sorted(p.name for p in source.iterdir()) == [
        "ca.crt", "client.key", "hosts.toml",
    ]  # fmt: skip


def test_hosts_sh_does_not_carry_over_a_directory_that_is_not_ours(tmp_path: Path) -> None:
    source = tmp_path / "docker-certs.d" / "registry.corp"
    source.mkdir(parents=True)
    (source / "ca.crt").write_text("CA\n")
    ours = tmp_path / "certs.d"
    (ours / "registry.corp").mkdir(parents=True)
    (ours / "registry.corp" / "ca.crt").write_text("MINE\n")
    params: dict[str, str | int | bool] = {
        "CONFIG_PATH": str(ours),
        "CARRY": f"{_digest(source)} registry.corp {source}\n",
    }
    result = run_step("hosts", params, tmp_path)
    assert result.returncode == 4 and "exists and is not ours" in result.stderr
    assert "is not ours" in summary_of(result)[0]
    assert (ours / "registry.corp" / "ca.crt").read_text() == "MINE\n"


def test_carried_files_are_recorded_and_the_probe_sees_one_gone(tmp_path: Path) -> None:
    """Item 1 for carried routes: a carried CA deleted or edited on the node (a config manager
    wiping certs.d) is not what the last apply left: the probe gives no mark back, so the hosts
    step shows a change and copies it again."""
    source = tmp_path / "docker-certs.d" / "registry.corp"
    source.mkdir(parents=True)
    (source / "ca.crt").write_text("CA\n")
    ours = tmp_path / "certs.d"
    bundle = "# registry-mirrors: docker.io/hosts.toml\nserver = 'a'\n"
    params: dict[str, str | int | bool] = {
        "CONFIG_PATH": str(ours),
        "APPLY_MARK": "m1",
        "CARRY": f"{_digest(source)} registry.corp {source}\n",
    }
    assert run_step("hosts", params, tmp_path, bundle).returncode == 0
    record = ours / ".registry-mirrors-applied"
    ours_sha, carried_sha = sha256("server = 'a'\n"), sha256("CA\n")
    assert record.read_text() == (
        f"mark m1\n{ours_sha}  docker.io/hosts.toml\n{carried_sha}  registry.corp/ca.crt\n"
    )
    config = tmp_path / "config.toml"
    assert probe(tmp_path, config, ours)["hosts_applied_mark"] == "m1"

    carried = ours / "registry.corp" / "ca.crt"
    for change in (lambda: carried.write_text("EDITED\n"), carried.unlink):
        change()
        assert "hosts_applied_mark" not in probe(tmp_path, config, ours)
    # Control: the step with a new mark copies it again, and the probe gives that mark back.
    again = run_step("hosts", {**params, "APPLY_MARK": "m2"}, tmp_path, bundle)
    assert again.returncode == 0 and "written=registry.corp" in again.stdout
    assert carried.read_text() == "CA\n"
    assert probe(tmp_path, config, ours)["hosts_applied_mark"] == "m2"
