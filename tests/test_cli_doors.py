"""The ``dmcs`` command line refuses bad values at its door: one clear line, a non-zero exit,
before it connects to anything or waits for anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from click.testing import CliRunner

from commands.alert_stream import setup_alert_routes
from commands.auth import Authenticator
from commands.cli import main

NOWHERE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["reprocess", "--night", "20250505", "--release", "dr1", "--release-id", "1",
          "--dsn", NOWHERE, "--workers", "0"], "--workers"),
        (["reprocess", "--night", "20250505", "--release", "dr1", "--release-id", "1",
          "--dsn", NOWHERE, "--local", "--workers", "-2"], "--workers"),
        (["reprocess", "--catch-up", "--night", "20250505", "--archive-dir", ".",
          "--dsn", NOWHERE, "--max-attempts", "0"], "--max-attempts"),
        (["events", "--count", "0", "--url", "ws://127.0.0.1:1/ws"], "--count"),
        (["alerts", "stream", "--full", "--count", "-1", "--token", "t",
          "--url", "ws://127.0.0.1:1/ws"], "--count"),
    ],
)  # fmt: skip
def test_counts_below_one_are_usage_errors(argv: list[str], option: str) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


@pytest_asyncio.fixture
async def alert_gateway() -> AsyncIterator[str]:
    app = web.Application()
    setup_alert_routes(app, Authenticator({"broker-token": "broker"}), None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    await runner.cleanup()


async def test_a_refused_token_is_said_as_such_not_as_an_unreachable_gateway(
    alert_gateway: str,
) -> None:
    argv = ["alerts", "stream", "--full", "--count", "1", "--url", alert_gateway]
    result = await asyncio.to_thread(CliRunner().invoke, main, [*argv, "--token", "wrong"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: the gateway refused the token (HTTP 401)"


@pytest.mark.parametrize("mjd", ["-99999999", "58848", "100000"])
def test_a_night_whose_visits_cannot_be_numbered_is_refused_before_it_is_written(
    tmp_path: Path, mjd: str
) -> None:
    out = tmp_path / "night"
    argv = ["simulate", "night", "--camera", "mini", "--visits", "2", "--out", str(out)]
    result = CliRunner().invoke(main, [*argv, "--night-mjd", mjd])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --night-mjd must be between 58849"), result.output
    assert len(result.output.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_gateway_port_out_of_range_is_refused_with_the_configuration(port: str) -> None:
    """Checked by the configuration's own field before anything starts (it was a bind()
    OverflowError traceback once PostgreSQL, Ray and every component were up)."""
    from config.system import load_system_config
    from state.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"gateway\.port"):
        load_system_config(gateway_port=int(port))
    result = CliRunner().invoke(main, ["run", "--port", port, "--duration", "1"])
    assert result.exit_code == 1 and "gateway.port" in result.output, result.output
    result = CliRunner().invoke(main, ["run", "--duration", "-5"])
    assert result.exit_code == 2 and "Invalid value for '--duration'" in result.output


GOOD_DSNS = [
    "postgresql://postgres:@/postgres?host=/var/run/pg",  # the embedded server's socket
    "postgresql://u:p@h1:5432,h2:5433/db",
    "postgres://u@[::1]:5432/db",
    "postgresql://u@host/db",
]
BAD_DSNS = ["garbage", "postgresql://u@host:notaport/db", "postgresql://u@127.0.0.1:99999/db"]


def test_dsns_are_checked_by_one_definition(tmp_path: Path) -> None:
    from config.system import check_dsn, load_system_config
    from state.errors import ConfigurationError

    assert [check_dsn(d) for d in GOOD_DSNS] == GOOD_DSNS
    for dsn in BAD_DSNS:
        with pytest.raises(ConfigurationError, match="the database DSN"):
            check_dsn(dsn)
    system = tmp_path / "system.toml"
    system.write_text('[database]\ndsn = "garbage"\n')
    with pytest.raises(ConfigurationError, match=r"database\.dsn"):
        load_system_config(system)


@pytest.mark.parametrize("dsn", BAD_DSNS)
@pytest.mark.parametrize(
    "argv",
    [
        ["reprocess", "--night", "20250505", "--release", "dr1", "--release-id", "1", "--local"],
        ["reprocess", "status"],
        ["simulate", "register", "."],
    ],
)
def test_a_dsn_that_cannot_name_a_server_is_a_usage_error(argv: list[str], dsn: str) -> None:
    """Refused at once, not retried as an unavailable database."""
    result = CliRunner().invoke(main, [*argv, "--dsn", dsn])
    assert result.exit_code == 2, result.output
    assert "--dsn: the database DSN" in result.output


def _system_file(tmp_path: Path, replace: tuple[str, str]) -> Path:
    """The packaged system file with one line changed, its data under ``tmp_path``."""
    from config.system import DEFAULT_SYSTEM_FILE

    text = DEFAULT_SYSTEM_FILE.read_text()
    assert replace[0] in text
    text = text.replace(replace[0], replace[1]).replace(
        'data_dir = "var"', f'data_dir = "{tmp_path / "data"}"'
    )
    text = text.replace('tokens_file = "tokens.toml"', f'tokens_file = "{tmp_path / "t.toml"}"')
    if not (tmp_path / "t.toml").exists():
        (tmp_path / "t.toml").write_text('[tokens]\n"tok" = "ocs"\n')
    path = tmp_path / "system.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("replace", "said"),
    [
        (("readout_timeout = 30.0", "readout_timeout = 30.0\nbogus = 1"),
         "invalid settings for HeaderService:\n1 validation error for HeaderServiceSettings\n"
         "bogus"),
        (("readout_timeout = 30.0", 'readout_timeout = "soon"'),
         "invalid settings for HeaderService:\n1 validation error for HeaderServiceSettings\n"
         "readout_timeout"),
        (("tokens_file", "tokens_file = 'bad.toml'\n#"), "bad.toml is not valid TOML: 'utf-8'"),
        (('data_dir = "var"', 'data_dir = "FILE/data"'), "data_dir FILE/data cannot be created"),
    ],
)  # fmt: skip
def test_a_system_file_that_cannot_run_is_refused_before_anything_starts(
    tmp_path: Path, replace: tuple[str, str], said: str
) -> None:
    """Component settings, the tokens file and the data directory are checked before
    PostgreSQL, Ray or any component starts (they were a component's traceback after all of
    them came up, a UnicodeDecodeError once PostgreSQL was up, a FileNotFoundError)."""
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[tokens]\n")
    (tmp_path / "FILE").write_text("a file, not a folder")
    replace = (replace[0], replace[1].replace("FILE", str(tmp_path / "FILE")))
    system = _system_file(tmp_path, replace)
    result = CliRunner().invoke(main, ["run", "--config", str(system), "--duration", "1"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ConfigurationError: "), result.output
    assert said.replace("FILE", str(tmp_path / "FILE")) in result.output
    assert "Traceback" not in result.output
    assert "started component" not in result.output
    assert not (tmp_path / "data" / "postgres").exists()


def test_a_gateway_port_in_use_is_said_before_anything_starts(tmp_path: Path) -> None:
    """Before: PostgreSQL, Ray and every component started (18 s here), then aiohttp's bind
    failed with an OSError traceback. Now the gateway's socket is bound first."""
    import socket

    system = _system_file(tmp_path, ("by_role = false", "by_role = false"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = ["run", "--config", str(system), "--port", str(port), "--duration", "1"]
        result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: StartupError: the gateway cannot listen on 127.0.0.1:{port}: Address already in"
        " use (another dmcs run? give --port)"
    ), result.output
    assert "started component" not in result.output
    assert not (tmp_path / "data" / "postgres").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["events", "--count", "1"],
        ["command", "SummitBuffer", "cutLink"],
        ["system", "enabled"],
        ["alerts", "get", "5"],
        ["alerts", "stream", "--full"],
        ["simulate", "drive", "--night", "."],
    ],
)
@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("foo", "expected ws://HOST:PORT/ws"),
        ("ws://[::1", "Invalid IPv6 URL"),
        ("ws://127.0.0.1:99999/ws", "Port out of range"),
        ("ftp://host/ws", "expected ws://HOST:PORT/ws"),
    ],
)
def test_a_url_that_cannot_name_a_gateway_is_a_usage_error(
    argv: list[str], url: str, why: str
) -> None:
    """Before: 'cannot connect to foo: foo', a ValueError traceback ('alerts stream' with
    'ws://[::1'), or 'cannot reach the gateway: http:///api/v1/alerts/5'."""
    result = CliRunner().invoke(main, [*argv, "--url", url, "--token", "t"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--url': not a gateway URL: {url!r} (" in result.output
    assert why in result.output


@pytest.mark.parametrize(
    ("argv", "folder"),
    [
        (["alerts", "stream", "--full", "--out", "{file}/sub"], "{file}/sub"),
        (["alerts", "get", "5", "--out", "{file}/alert.avro"], "{file}"),
    ],
)
def test_an_alert_out_that_cannot_be_written_is_refused_before_the_gateway_is_asked(
    tmp_path: Path, argv: list[str], folder: str
) -> None:
    """Before: 'alerts stream' raised NotADirectoryError's traceback; 'alerts get' fetched the
    alert and then failed writing it."""
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    argv = [a.format(file=file) for a in argv]
    result = CliRunner().invoke(main, [*argv, "--url", "ws://127.0.0.1:1/ws", "--token", "t"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for --out: {folder.format(file=file)} is not a writable folder" in (
        result.output
    )


@pytest.mark.parametrize("family", ["127.0.0.1", "::1"])
async def test_the_gateway_listens_on_every_address_of_its_host(
    family: str, localhost_addresses: list[str]
) -> None:
    """``host = "localhost"`` listened on its first address only (127.0.0.1, not ::1) once
    the socket was bound early; now every address it resolves to answers, on one port, and a
    port in use on any of them is still said at once."""
    from commands.server import listening
    from state.errors import StartupError

    if family not in localhost_addresses:
        pytest.skip("no IPv6 loopback on this machine")
    with listening("localhost", 0) as socks:
        port = socks[0].getsockname()[1]
        assert sorted(s.getsockname()[0] for s in socks) == sorted(localhost_addresses)
        assert {s.getsockname()[1] for s in socks} == {port}
        _, writer = await asyncio.open_connection(family, port)
        writer.close()
        await writer.wait_closed()
        in_use = f"localhost:{port}: Address already in use"
        with pytest.raises(StartupError, match=in_use), listening("localhost", port):
            pass


async def _sigterm_once_said(argv: list[str], said_when_up: str) -> tuple[int, str]:
    """Run ``dmcs argv`` until it prints ``said_when_up``, SIGTERM it; its code and output."""
    import os
    import signal
    import sys

    dmcs = Path(sys.executable).with_name("dmcs")
    proc = await asyncio.create_subprocess_exec(
        str(dmcs), *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    said: list[str] = []
    try:
        async with asyncio.timeout(180):
            assert proc.stdout is not None
            while not any(said_when_up in line for line in said):
                line = (await proc.stdout.readline()).decode()
                assert line, "".join(said)
                said.append(line)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, "".join(said) + out.decode()


async def test_dmcs_run_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM (systemd, docker stop, kill) reached Ray's handler, which printed a stack and
    killed the process: no component stopped, no "dmcs stopped". Now it stops as Ctrl-C does,
    and its embedded PostgreSQL with it."""
    import socket

    from base.postgres import postmaster_pid

    system = _system_file(tmp_path, ("by_role = false", "by_role = false"))
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    argv = ["run", "--config", str(system), "--port", str(port)]
    code, output = await _sigterm_once_said(argv, "dmcs running")
    assert code == 0, output
    assert "dmcs stopped" in output and "SIGTERM received" not in output, output
    assert postmaster_pid(tmp_path / "data" / "postgres") is None


async def test_a_replay_sigtermed_is_interrupted_as_by_ctrl_c(tmp_path: Path) -> None:
    """A replay SIGTERMed died in Ray's handler with a stack and no summary; now it says it
    was interrupted and that the same command resumes (exit 130), as after Ctrl-C."""
    import json

    out = tmp_path / "replay"
    argv = ["replay", "--visits", "2", "--out", str(out), "--no-progress"]
    code, output = await _sigterm_once_said(argv, "dmcs is up")
    assert code == 130, output
    assert "interrupted; the same command resumes" in output, output
    assert "SIGTERM received" not in output, output
    assert json.loads((out / "summary.json").read_text())["failure"].startswith("interrupted")
