"""Default exclusions, the user's path lists and the rsync filter rules built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsagent.migration.excludes import (
    MIGRATE_DEFAULT_EXCLUDES,
    SYNC_DEFAULT_EXCLUDES,
    PathListError,
    agent_excludes,
    filter_rules,
    migrate_excludes,
    only_sync_sources,
    parse_path_list,
    sync_excludes,
)


class TestDefaults:
    def test_migrate(self) -> None:
        """The full copy leaves out the spec's list: kernel views and lost+found."""
        assert MIGRATE_DEFAULT_EXCLUDES == (
            "/proc/*",
            "/sys/*",
            "/lost+found/*",
            "/var/lib/ntp/proc/*",
        )

    def test_sync_adds_what_the_target_rewrote(self) -> None:
        """A sync also leaves out fstab, kernel modules, GRUB platform dirs and the like."""
        assert set(MIGRATE_DEFAULT_EXCLUDES) < set(SYNC_DEFAULT_EXCLUDES)
        for path in ("/etc/fstab", "/lib/modules/*", "/boot/grub2/i386-pc/*", "/tmp/_MEI*"):
            assert path in SYNC_DEFAULT_EXCLUDES


class TestParsePathList:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, ()),
            ("", ()),
            (" , ,", ()),
            ("/home/mnt_test/*", ("/home/mnt_test/*",)),
            (" /var/cache , /opt/big dir ,/srv/x/", ("/var/cache", "/opt/big dir", "/srv/x/")),
            ("/a,/a,/b", ("/a", "/b")),
            ("/data/**/tmp,/x?[0-9]", ("/data/**/tmp", "/x?[0-9]")),
        ],
    )
    def test_accepted(self, value: str, expected: tuple[str, ...]) -> None:
        """Comma-separated absolute paths; blanks trimmed, empties and repeats dropped."""
        assert parse_path_list(value, "MIGRATE_EXCLUDE_DIR") == expected

    @pytest.mark.parametrize(
        ("value", "why"),
        [
            ("var/cache", "must be an absolute path"),
            ("/a,~/b", "'~/b' must be an absolute path"),
            ("/a/../etc", "must not contain '..'"),
            ("/a\nb", "must not contain a newline"),
            ("/a\0b", "must not contain a newline or a NUL"),
            ("/" + "x" * 5000, "is longer than 4096 bytes"),
        ],
    )
    def test_refused(self, value: str, why: str) -> None:
        """A bad entry is refused with the setting's name, the entry and the reason."""
        with pytest.raises(PathListError, match=f"^SYNC_EXCLUDE_DIR: entry .*{why}"):
            parse_path_list(value, "SYNC_EXCLUDE_DIR")

    def test_too_many(self) -> None:
        """A list longer than the limit is refused."""
        with pytest.raises(PathListError, match="1001 entries"):
            parse_path_list(",".join(f"/d{i}" for i in range(1001)), "MIGRATE_EXCLUDE_DIR")


class TestPassExcludes:
    def test_migrate(self) -> None:
        """Defaults, lost+found of each mount, skipped mounts' contents, the agent's files, the
        user's list."""
        excludes = migrate_excludes(
            "/var/cache/*,/proc/*",
            agent_paths=("/var/lib/smsagent", "/etc/smsagent/smsagent.env"),
            mount_paths=("", "home", "data disk"),
            skipped_mount_paths=("run", "srv/data"),
        )
        assert excludes == (
            *MIGRATE_DEFAULT_EXCLUDES,
            "/home/lost+found/*",
            "/data disk/lost+found/*",
            "/run/*",
            "/srv/data/*",
            "/var/lib/smsagent",
            "/etc/smsagent/smsagent.env",
            "/var/cache/*",
        )

    def test_sync(self) -> None:
        """A sync starts from its own defaults and takes `SYNC_EXCLUDE_DIR`."""
        excludes = sync_excludes("/srv/scratch")
        assert excludes == (*SYNC_DEFAULT_EXCLUDES, "/srv/scratch")

    def test_errors_name_the_setting(self) -> None:
        """Each pass names its own setting in errors."""
        with pytest.raises(PathListError, match="MIGRATE_EXCLUDE_DIR"):
            migrate_excludes("relative")
        with pytest.raises(PathListError, match="SYNC_EXCLUDE_DIR"):
            sync_excludes("relative")

    def test_filter_rules(self) -> None:
        """Each exclusion becomes one anchored exclude rule, in order, once."""
        assert filter_rules(["/proc/*", "/a b", "/proc/*"]) == ("- /proc/*", "- /a b")


class TestAgentExcludes:
    def test_under_the_source_root(self) -> None:
        """The agent's state dir and env file are excluded relative to the source root."""
        rules = agent_excludes(
            Path("/"), [Path("/var/lib/smsagent"), Path("/etc/smsagent/smsagent.env")]
        )
        assert rules == ("/var/lib/smsagent", "/etc/smsagent/smsagent.env")

    def test_other_source_root(self) -> None:
        """Paths outside the source root need no rule; inside ones are re-anchored."""
        rules = agent_excludes(
            Path("/srv/root/"), [Path("/var/lib/smsagent"), Path("/srv/root/state/")]
        )
        assert rules == ("/state",)

    def test_source_root_itself_is_never_excluded(self) -> None:
        """A state dir equal to the source root cannot exclude the whole copy."""
        assert agent_excludes(Path("/srv"), [Path("/srv")]) == ()


class TestOnlySyncSources:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, ()),
            ("/home", ("home",)),
            ("/var/www, /home, /home/alice", ("home", "var/www")),
            ("/srv/,/", ()),
        ],
    )
    def test_sources(self, value: str, expected: tuple[str, ...]) -> None:
        """Directories become relative sources; nested ones and `/` collapse."""
        assert only_sync_sources(value) == expected

    def test_wildcards_refused(self) -> None:
        """A directory to sync must be named exactly."""
        with pytest.raises(PathListError, match="ONLY_SYNC_DIR: entry '/home/\\*' must name"):
            only_sync_sources("/home/*")
