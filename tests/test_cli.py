"""The `ftpd` command line (accounts, first start, settings), login policy, and `crc-tools`."""

import ftplib
import io
import re
import socket
import subprocess
import time

import pytest

from conftest import Ftpd
from helpers import FTPD, crc32, key, pattern, self_signed_cert

CRC_TOOLS = FTPD.parent / "crc-tools"


def login(srv: Ftpd, user: str, password: str) -> str:
    """The reply to PASS (or the error it raised)."""
    f = ftplib.FTP()
    f.connect("127.0.0.1", srv.port, timeout=30)
    try:
        return f.login(user, password)
    except ftplib.Error as e:
        return str(e)
    finally:
        f.close()


def add_user(srv: Ftpd, name: str, password: str) -> subprocess.CompletedProcess:
    return srv.cli(
        "user", "add", "--password-stdin", "--iterations", "1000", "--", name, input=password + "\n", check=False
    )


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- accounts ----------------------------------------------------------------------------------


def test_user_add_then_login_without_restart(ftpd):
    assert login(ftpd, "carol", "carol pw").startswith("530")
    r = add_user(ftpd, "carol", "carol pw")
    assert r.returncode == 0, r.stderr
    assert "carol" in r.stdout and r.stderr == ""
    assert "carol pw" not in ftpd.users_file.read_text()  # stored hashed
    assert login(ftpd, "carol", "carol pw").startswith("230")
    assert login(ftpd, "carol", "wrong").startswith("530")
    f = ftplib.FTP()
    f.connect("127.0.0.1", ftpd.port, timeout=30)
    f.login("carol", "carol pw")
    f.storbinary("STOR c.txt", io.BytesIO(b"carol\n"))
    assert ftpd.file("carol", "c.txt").read_bytes() == b"carol\n"
    f.quit()


def test_duplicate_add_fails_with_one_clear_line(ftpd):
    before = ftpd.users_file.read_text()
    r = add_user(ftpd, "alice", "another")
    assert r.returncode != 0
    line = one_line(r.stderr)
    assert "alice" in line and "exists" in line, line
    assert ftpd.users_file.read_text() == before
    assert login(ftpd, "alice", "alice-pw").startswith("230")
    assert login(ftpd, "alice", "another").startswith("530")


def test_user_list_and_del(ftpd):
    r = ftpd.cli("user", "list")
    assert r.stdout.split() == ["alice", "bob"]
    assert add_user(ftpd, "dave", "dave-pw").returncode == 0
    assert ftpd.cli("user", "list").stdout.split() == ["alice", "bob", "dave"]
    assert login(ftpd, "bob", "bob-pw").startswith("230")
    r = ftpd.cli("user", "del", "bob")
    assert r.returncode == 0, r.stderr
    assert ftpd.cli("user", "list").stdout.split() == ["alice", "dave"]
    assert login(ftpd, "bob", "bob-pw").startswith("530")
    assert login(ftpd, "alice", "alice-pw").startswith("230")
    r = ftpd.cli("user", "del", "bob", check=False)
    assert r.returncode != 0 and "bob" in one_line(r.stderr)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-dash", "a/b", "../x", "a b", "x" * 65, "caf\u00e9", "tab\tname", "a\\b"]
)
def test_bad_user_names_are_rejected(ftpd, name):
    before = ftpd.users_file.read_text()
    r = add_user(ftpd, name, "pw")
    assert r.returncode != 0
    assert "invalid user name" in one_line(r.stderr)
    assert ftpd.users_file.read_text() == before


def test_empty_password_and_password_on_the_command_line_are_refused(ftpd):
    r = add_user(ftpd, "erin", "")
    assert r.returncode != 0 and "password" in one_line(r.stderr)
    r = ftpd.cli("user", "add", "erin", check=False, input="pw\n")  # no --password-stdin
    assert r.returncode != 0
    assert "erin" not in ftpd.cli("user", "list").stdout


def test_first_start_creates_an_account_and_prints_its_password_once(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    srv.users_file.write_text("")  # no accounts at all
    srv.env["FTPD_INITIAL_USER"] = "box"
    try:
        srv.start()
        out = srv.out_path.read_text()
        m = re.search(r"created user 'box' with password '([^']+)'", out)
        assert m, out
        password = m.group(1)
        assert len(password) >= 12
        assert one_line(out)
        assert password not in srv.log()  # standard error (the log) never shows it
        assert login(srv, "box", password).startswith("230")
        assert login(srv, "box", password + "x").startswith("530")
        assert password not in srv.users_file.read_text()
        srv.restart()
        assert srv.out_path.read_text() == out  # not again
        assert login(srv, "box", password).startswith("230")
        assert srv.cli("user", "list").stdout.split() == ["box"]
    finally:
        srv.stop()


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, value, name",
    [
        ("FTPD_PASSIVE_PORTS", "9-1", "passive_ports"),
        ("FTPD_PASSIVE_PORTS", "50000", "passive_ports"),
        ("FTPD_LISTEN", "nowhere", "listen"),
        ("FTPD_LOG_FORMAT", "xml", "log_format"),
        ("FTPD_DURABILITY", "sometimes", "durability"),
        ("FTPD_ANONYMOUS", "maybe", "anonymous"),
        ("FTPD_IDLE_TIMEOUT", "0", "idle_timeout"),
        ("FTPD_UPLOAD_BUFFER_KIB", "1", "upload_buffer_kib"),
        ("FTPD_UPLOAD_BUFFER_MAX_KIB", "70000", "upload_buffer_max_kib"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line_naming_them(tmp_path, setting, value, name):
    srv = Ftpd(tmp_path / "srv")
    srv.env[setting] = value
    r = subprocess.run([str(FTPD), "serve"], env=srv.env, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    line = one_line(r.stderr)
    assert name in line, line
    assert r.stdout == ""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_listen_address_in_use_stops_start_up_naming_address_and_cause(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = "127.0.0.1:%d" % busy.getsockname()[1]
        srv.env["FTPD_LISTEN"] = addr
        r = subprocess.run([str(FTPD), "serve"], env=srv.env, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    last = r.stderr.splitlines()[-1]
    assert last.startswith("ftpd: ") and addr in last and "in use" in last, r.stderr


def test_unknown_key_in_a_config_file_stops_start_up(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    conf = tmp_path / "ftpd.toml"
    conf.write_text('lisen = "127.0.0.1:2121"\n')
    r = subprocess.run(
        [str(FTPD), "serve", "--config", str(conf)], env=srv.env, capture_output=True, text=True, timeout=20
    )
    assert r.returncode != 0
    assert "lisen" in one_line(r.stderr)
    r = subprocess.run(
        [str(FTPD), "serve", "--config", str(tmp_path / "missing.toml")],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode != 0
    assert "missing.toml" in one_line(r.stderr)


def test_a_good_config_file_is_used(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    conf = tmp_path / "ftpd.toml"
    conf.write_text("anonymous = true\n")
    srv.env["FTPD_CONFIG"] = str(conf)
    srv.start()
    try:
        assert login(srv, "anonymous", "box@example.com").startswith("230")
    finally:
        srv.stop()


def test_defaults_print_the_shipped_configuration():
    r = subprocess.run([str(FTPD), "defaults"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0
    shipped = (FTPD.parent.parent.parent / "conf" / "ftpd.toml").read_text()
    assert r.stdout == shipped


# -- check-config ------------------------------------------------------------------------------


def run_ftpd(srv: Ftpd, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ftpd ARGS` with the server's environment (plus `env`), to its end; a `serve` that
    starts after all is stopped and counts as a failure."""
    proc = subprocess.Popen(
        [str(FTPD), *args], env={**srv.env, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"ftpd {' '.join(args)} kept running")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_untouched(srv: Ftpd) -> None:
    """Nothing was created and nothing listens."""
    assert not srv.root.exists() and not srv.state.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_check_config_accepts_good_settings_and_starts_nothing(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    conf = tmp_path / "ftpd.toml"
    conf.write_text('anonymous = true\npassive_ports = "40000-40099"\n')
    r = run_ftpd(srv, "check-config", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    line = one_line(r.stdout)
    assert line.startswith("ftpd: configuration OK (") and f"listen 127.0.0.1:{srv.port}" in line, line
    # the environment (FTPD_PASSIVE_PORTS) wins over the file, as for serve
    assert f"passive ports {srv.passive[0]}-{srv.passive[1]}" in line, line
    assert "FTPS off" in line, line
    assert r.stderr == ""
    assert_untouched(srv)


@pytest.mark.parametrize(
    "file_text, env, name",
    [
        ('durability = "maybe"\n', {}, "durability"),
        ("idle_timeout = 0\n", {}, "idle_timeout"),
        ("", {"FTPD_LOG_FORMAT": "xml"}, "log_format"),
        ("", {"FTPD_ANONYMOUS": "maybe"}, "anonymous"),
        ("lisen = 1\n", {}, "lisen"),
        ("", {"FTPD_FTPS_REQUIRED": "true"}, "ftps_required"),
    ],
)
def test_check_config_refuses_a_bad_value_with_the_line_serve_prints(tmp_path, file_text, env, name):
    srv = Ftpd(tmp_path / "srv")
    conf = tmp_path / "ftpd.toml"
    conf.write_text(file_text)
    checked = run_ftpd(srv, "check-config", "--config", str(conf), env=env)
    assert checked.returncode == 2
    line = one_line(checked.stderr)
    assert line.startswith("ftpd: ") and name in line, line
    assert checked.stdout == ""
    served = run_ftpd(srv, "serve", "--config", str(conf), env=env)
    assert served.returncode == 2 and one_line(served.stderr) == line
    assert_untouched(srv)


def test_check_config_with_a_missing_file_fails(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    r = run_ftpd(srv, "check-config", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2
    assert "missing.toml" in one_line(r.stderr)
    r = run_ftpd(srv, "check-config", env={"FTPD_CONFIG": str(tmp_path / "gone.toml")})
    assert r.returncode == 2
    assert "gone.toml" in one_line(r.stderr)


def test_check_config_honours_the_environment(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    conf = tmp_path / "ftpd.toml"
    conf.write_text('listen = "127.0.0.1:2200"\nfront = false\n')
    srv.env.pop("FTPD_LISTEN")
    r = run_ftpd(srv, "check-config", env={"FTPD_CONFIG": str(conf)})
    assert r.returncode == 0, r.stderr
    assert "listen 127.0.0.1:2200" in r.stdout and "front off" in r.stdout, r.stdout
    r = run_ftpd(srv, "check-config", env={"FTPD_CONFIG": str(conf), "FTPD_LISTEN": "127.0.0.1:2999"})
    assert r.returncode == 0 and "listen 127.0.0.1:2999" in r.stdout, r
    r = run_ftpd(srv, "check-config", env={"FTPD_CONFIG": str(conf), "FTPD_FRONT": "yes please"})
    assert r.returncode == 2 and "front" in one_line(r.stderr), r


def test_check_config_loads_the_certificate_as_serve_does(tmp_path):
    srv = Ftpd(tmp_path / "srv")
    cert, keyf = self_signed_cert(tmp_path)
    other_cert, other_key = self_signed_cert(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    good = {"FTPD_FTPS_CERT": str(cert), "FTPD_FTPS_KEY": str(keyf)}
    r = run_ftpd(srv, "check-config", env={**good, "FTPD_FTPS_REQUIRED": "true"})
    assert r.returncode == 0, r.stderr
    assert "FTPS required" in one_line(r.stdout)
    for env, name in [
        ({**good, "FTPD_FTPS_CERT": str(junk)}, "ftps_cert"),
        ({**good, "FTPD_FTPS_KEY": str(junk)}, "ftps_key"),
        ({**good, "FTPD_FTPS_KEY": str(other_key)}, "ftps_key"),  # not this certificate's key
        ({**good, "FTPD_FTPS_CERT": str(tmp_path / "none.pem")}, "ftps_cert"),
        ({"FTPD_FTPS_CERT": str(other_cert)}, "ftps_cert"),  # without a key
    ]:
        checked = run_ftpd(srv, "check-config", env=env)
        assert checked.returncode == 2, (env, checked)
        line = one_line(checked.stderr)
        assert f"`{name}`" in line, line
        served = run_ftpd(srv, "serve", env=env)
        assert served.returncode == 2 and one_line(served.stderr) == line, served
    assert_untouched(srv)


# -- login policy ------------------------------------------------------------------------------


def test_anonymous_is_refused_by_default(ftpd):
    for user in ("anonymous", "ftp"):
        assert login(ftpd, user, "guest@example.com").startswith("530")


def test_anonymous_allowed_when_configured(ftpd_factory):
    srv = ftpd_factory(anonymous="true")
    f = ftplib.FTP()
    f.connect("127.0.0.1", srv.port, timeout=30)
    assert f.login("anonymous", "guest@example.com").startswith("230")
    data = pattern(10_000, seed=81)
    f.sendcmd(f"SITE KEY {key(crc32(data))}")
    f.storbinary("STOR anon.ts", io.BytesIO(data))
    assert (srv.root / "anonymous" / "anon.ts").read_bytes() == data
    assert f.sendcmd("SITE KEY NULL anon.ts") == f"230 {key(crc32(data))}"
    f.quit()
    # named accounts still need their password
    assert login(srv, "alice", "wrong").startswith("530")
    assert login(srv, "alice", "alice-pw").startswith("230")


def test_without_the_front_libunftp_locks_that_user_from_that_address(ftpd_factory):
    srv = ftpd_factory(front="false", failed_logins_max=3, failed_logins_window=4)
    for _ in range(2):
        assert login(srv, "alice", "wrong").startswith("530")
    assert login(srv, "alice", "alice-pw").startswith("230")  # below the limit
    for _ in range(3):
        assert login(srv, "alice", "wrong").startswith("530")
    # now even the right password is refused for alice from this address ...
    assert login(srv, "alice", "alice-pw").startswith("530")
    # ... but not for another user
    assert login(srv, "bob", "bob-pw").startswith("230")
    # and the lock ends once the window passes without failures
    time.sleep(4.5)
    assert login(srv, "alice", "alice-pw").startswith("230")


def test_without_the_front_the_policy_locks_after_five_failures(ftpd_factory):
    srv = ftpd_factory(front="false")
    for _ in range(5):
        assert login(srv, "alice", "wrong").startswith("530")
    assert login(srv, "alice", "alice-pw").startswith("530")
    assert login(srv, "bob", "bob-pw").startswith("230")
    assert "locked" in srv.log().lower()


def test_by_default_the_front_blocks_the_address_after_five_failures(ftpd):
    for _ in range(5):
        assert login(ftpd, "alice", "wrong").startswith("530")
    # The front counts per client address: the sixth attempt, even with the right password,
    # is answered 421 and the connection closed.
    f = ftplib.FTP()
    try:
        f.connect("127.0.0.1", ftpd.port, timeout=10)
        reply = f.login("alice", "alice-pw")
    except ftplib.all_errors as e:
        reply = str(e)
    finally:
        f.close()
    assert reply.startswith("421"), reply
    assert "127.0.0.1" in ftpd.log()


# -- crc-tools ---------------------------------------------------------------------------------


def crc_tools(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CRC_TOOLS), *args], input=input, capture_output=True, timeout=20)


def test_crc_tools_sum_files_and_stdin(tmp_path):
    data = pattern(3_000_000, seed=82)
    p = tmp_path / "rec one.ts"
    p.write_bytes(data)
    r = crc_tools("sum", str(p), "-", input=b"123456789")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [f"{key(crc32(data))}  {p}", "0xCBF43926  -"]
    r = crc_tools("sum", "-", input=b"")
    assert r.stdout.decode() == "0x00000000  -\n"


def test_crc_tools_prefix(tmp_path):
    data = pattern(2_000_000, seed=83)
    p = tmp_path / "rec.ts"
    p.write_bytes(data)
    for n in (0, 1, 1_048_576, 1_234_567, len(data)):
        r = crc_tools("prefix", str(p), str(n))
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == f"{key(crc32(data[:n]))}\n"


def test_crc_tools_errors_are_one_line_and_fail(tmp_path):
    p = tmp_path / "short.ts"
    p.write_bytes(b"12 bytes....")
    for args in (
        ("sum", str(tmp_path / "missing.ts")),
        ("prefix", str(tmp_path / "missing.ts"), "1"),
        ("prefix", str(p), "13"),
    ):
        r = crc_tools(*args)
        assert r.returncode != 0, args
        line = one_line(r.stderr.decode())
        assert line.startswith("crc-tools: ") and str(args[1]) in line, line
        assert r.stdout == b""
    # one bad file among good ones: the good ones are still summed, the exit is still a failure
    r = crc_tools("sum", str(p), str(tmp_path / "missing.ts"))
    assert r.returncode != 0
    assert r.stdout.decode() == f"{key(crc32(b'12 bytes....'))}  {p}\n"
    assert "missing.ts" in one_line(r.stderr.decode())
