"""The login cache against a real ftpd: a box that logged in before costs no PBKDF2 the next time,
a changed users file drops the cache at once, and wrong passwords never get in.

What PBKDF2 did is counted, not timed: with `ftpd::users` at debug level each check logs
`password checked with PBKDF2 user="…" right=…` and each cache hit `password matched the login
cache user="…"`. Both lines are written before the login's reply is sent.
"""

import ftplib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import USERS

# Everything else at info, the accounts' checks at debug.
DEBUG_USERS = "info,ftpd::users=debug"


def checks(srv, user: str, right: bool | None = None) -> int:
    """PBKDF2 checks of `user`'s password logged so far (only right or wrong ones if given)."""
    want = "" if right is None else f" right={str(right).lower()}"
    pat = re.compile(rf'password checked with PBKDF2 user="{re.escape(user)}"{want}')
    return len(pat.findall(srv.log()))


def hits(srv, user: str) -> int:
    return srv.log().count(f'password matched the login cache user="{user}"')


def login(srv, user: str, password: str) -> None:
    """Logs in and out; raises ftplib.error_perm on a refusal."""
    f = ftplib.FTP()
    f.connect(srv.host, srv.port, timeout=30)
    try:
        f.login(user, password)
        f.voidcmd("NOOP")
        f.quit()
    finally:
        f.close()


def refused(srv, user: str, password: str) -> str:
    with pytest.raises(ftplib.error_perm) as e:
        login(srv, user, password)
    assert str(e.value).startswith("530"), e.value
    return str(e.value)


def set_password(srv, user: str, password: str) -> None:
    """As an operator changes a password: `ftpd user del` then `ftpd user add`."""
    srv.cli("user", "del", user)
    srv.cli("user", "add", user, "--password-stdin", "--iterations", "1000", input=password + "\n")


def test_repeated_logins_of_a_box_run_pbkdf2_once(ftpd_factory):
    srv = ftpd_factory(log_level=DEBUG_USERS)
    for _ in range(25):
        login(srv, "alice", USERS["alice"])
    assert checks(srv, "alice") == 1, srv.log()
    assert hits(srv, "alice") == 24
    # Another box has its own entry.
    for _ in range(3):
        login(srv, "bob", USERS["bob"])
    assert (checks(srv, "bob"), hits(srv, "bob")) == (1, 2)
    assert checks(srv, "alice") == 1


def test_concurrent_first_logins_all_succeed_then_hit(ftpd_factory):
    srv = ftpd_factory(log_level=DEBUG_USERS)
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: login(srv, "alice", USERS["alice"]), range(20)))
    cold = checks(srv, "alice", right=True)
    assert 1 <= cold <= 20
    for _ in range(10):
        login(srv, "alice", USERS["alice"])
    assert checks(srv, "alice") == cold, "later logins are all cache hits"
    assert hits(srv, "alice") == 20 - cold + 10


def test_without_the_cache_every_login_runs_pbkdf2(ftpd_factory):
    srv = ftpd_factory(log_level=DEBUG_USERS, login_cache_seconds=0)
    for _ in range(5):
        login(srv, "alice", USERS["alice"])
    assert (checks(srv, "alice"), hits(srv, "alice")) == (5, 0)


def test_a_changed_password_is_refused_at_once_and_a_removed_user_too(ftpd_factory):
    srv = ftpd_factory(log_level=DEBUG_USERS)
    for user in ("alice", "bob"):
        login(srv, user, USERS[user])
        login(srv, user, USERS[user])
        assert (checks(srv, user), hits(srv, user)) == (1, 1)

    # A removed user: refused at the very next login, though its login was cached.
    srv.cli("user", "del", "bob")
    refused(srv, "bob", USERS["bob"])
    assert hits(srv, "bob") == 1

    # A changed password: the old one is refused at once, the new one works (and is cached).
    set_password(srv, "alice", "alice-new-pw")
    refused(srv, "alice", USERS["alice"])
    assert checks(srv, "alice", right=False) == 1, "checked against the new record, not the cache"
    login(srv, "alice", "alice-new-pw")
    login(srv, "alice", "alice-new-pw")
    assert (checks(srv, "alice", right=True), hits(srv, "alice")) == (2, 2)
    refused(srv, "alice", USERS["alice"])
    assert hits(srv, "alice") == 2
    assert srv.log().count("users file reloaded") >= 2


def test_wrong_passwords_never_succeed_after_a_right_one(ftpd_factory):
    # No throttle: the wrong passwords below must reach the password check, not a block.
    srv = ftpd_factory(log_level=DEBUG_USERS, failed_logins_max=0, failed_logins_per_address=0)
    right = USERS["alice"]
    login(srv, "alice", right)
    login(srv, "alice", right)
    wrong = [right[:-1], right + "-", right.upper(), "x" + right, right + right, "Alice-pw", USERS["bob"], "alice"]
    # Each failure waits 1.5 s before its 530: send them together.
    with ThreadPoolExecutor(len(wrong)) as pool:
        replies = list(pool.map(lambda pw: refused(srv, "alice", pw), wrong))
    assert len(replies) == len(wrong)
    assert checks(srv, "alice", right=False) == len(wrong), "every wrong password ran PBKDF2"
    # Nor as another user whose entry is cached.
    login(srv, "bob", USERS["bob"])
    refused(srv, "bob", right)
    refused(srv, "bob", USERS["bob"] + "x")
    assert checks(srv, "bob", right=False) == 2
    # The right password's entry is still there and still the only way in.
    login(srv, "alice", right)
    assert (checks(srv, "alice", right=True), hits(srv, "alice")) == (1, 2)


def test_first_logins_queued_for_more_than_15_s_still_get_in(ftpd_factory):
    """After a reconnect storm of first logins the password checks queue: the last ones wait
    longer than 15 s for their verdict, and must get their 230, not a 421."""
    import time

    srv = ftpd_factory(password_threads=1, login_cache_seconds=0, failed_logins_max=0)
    srv.cli("user", "del", "alice")
    srv.cli("user", "add", "alice", "--password-stdin", "--iterations", "2000000", input=USERS["alice"] + "\n")
    t0 = time.monotonic()
    login(srv, "alice", USERS["alice"])
    one = time.monotonic() - t0
    # Enough logins at once that the last verdict comes after about 20 s of checks in a row.
    boxes = min(400, int(20 / one) + 2)

    def timed(_):
        t = time.monotonic()
        f = ftplib.FTP()
        f.connect(srv.host, srv.port, timeout=120)
        try:
            f.login("alice", USERS["alice"])
            f.quit()
        finally:
            f.close()
        return time.monotonic() - t

    with ThreadPoolExecutor(boxes) as pool:
        waits = list(pool.map(timed, range(boxes)))
    assert max(waits) > 15, f"the queue never passed 15 s ({one:.2f} s per check, {boxes} logins)"
