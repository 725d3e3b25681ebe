"""Enumerations of the SMS v3 wire protocol; every member's value is the wire string."""

from __future__ import annotations

from enum import Enum


class WireEnum(str, Enum):
    """A `str` enum whose values are exactly what travels on the wire."""

    def __str__(self) -> str:
        return str(self.value)


class OsType(WireEnum):
    WINDOWS = "WINDOWS"
    LINUX = "LINUX"


class TaskType(WireEnum):
    MIGRATE_FILE = "MIGRATE_FILE"
    MIGRATE_BLOCK = "MIGRATE_BLOCK"


class MigrateType(WireEnum):
    WINDOWS_MIGRATE_BLOCK = "WINDOWS_MIGRATE_BLOCK"
    LINUX_MIGRATE_FILE = "LINUX_MIGRATE_FILE"
    LINUX_MIGRATE_BLOCK = "LINUX_MIGRATE_BLOCK"


class CommandName(WireEnum):
    """Commands `GET /v3/sources/{id}/command` hands out, current and legacy."""

    START = "START"
    STOP = "STOP"
    SKIP = "SKIP"
    PREMIGRATE = "PREMIGRATE"
    TASK_NOT_STARTED = "TASK_NOT_STARTED"
    TASK_HAS_STOPPED = "TASK_HAS_STOPPED"
    TASK_HAS_FINISHED = "TASK_HAS_FINISHED"
    SYNC = "SYNC"
    DELETE = "DELETE"
    UPLOAD_LOG = "UPLOAD_LOG"
    RSET_LOG_ACL = "RSET_LOG_ACL"


class CommandResult(WireEnum):
    success = "success"
    fail = "fail"


class SourceState(WireEnum):
    """Source-server `state` as ShowServer/ListServers report it."""

    unavailable = "unavailable"
    waiting = "waiting"
    initialize = "initialize"
    replicate = "replicate"
    syncing = "syncing"
    stopping = "stopping"
    stopped = "stopped"
    skipping = "skipping"
    deleting = "deleting"
    clearing = "clearing"
    cleared = "cleared"
    clearfailed = "clearfailed"
    premigready = "premigready"
    premiging = "premiging"
    premiged = "premiged"
    premigfailed = "premigfailed"
    cloning = "cloning"
    cutovering = "cutovering"
    finished = "finished"
    error = "error"


class CopyState(WireEnum):
    """`copystate` of `PUT /v3/sources/{id}/changestate` (note `init`, not `initialize`)."""

    unavailable = "unavailable"
    waiting = "waiting"
    init = "init"
    replicate = "replicate"
    syncing = "syncing"
    stopping = "stopping"
    stopped = "stopped"
    skipping = "skipping"
    deleting = "deleting"
    clearing = "clearing"
    cleared = "cleared"
    clearfailed = "clearfailed"
    premigready = "premigready"
    premiging = "premiging"
    premiged = "premiged"
    premigfailed = "premigfailed"
    cloning = "cloning"
    cutovering = "cutovering"
    finished = "finished"
    error = "error"


class MigrationCycle(WireEnum):
    no_ready = "no_ready"
    ready_for_test = "ready_for_test"
    testing = "testing"
    tested = "tested"
    cutovering = "cutovering"
    cutovered = "cutovered"
    checking = "checking"
    setting = "setting"
    replicating = "replicating"
    syncing = "syncing"


class TaskState(WireEnum):
    READY = "READY"
    RUNNING = "RUNNING"
    SYNCING = "SYNCING"
    MIGRATE_SUCCESS = "MIGRATE_SUCCESS"
    SYNC_SUCCESS = "SYNC_SUCCESS"
    MIGRATE_FAIL = "MIGRATE_FAIL"
    SYNC_FAIL = "SYNC_FAIL"
    ABORTING = "ABORTING"
    ABORT = "ABORT"
    SKIPPING = "SKIPPING"
    DELETING = "DELETING"
    RESETING = "RESETING"
    SYNC_F_ROLLBACKING = "SYNC_F_ROLLBACKING"
    SYNC_F_ROLLBACK_SUCCESS = "SYNC_F_ROLLBACK_SUCCESS"


class SubtaskName(WireEnum):
    CREATE_CLOUD_SERVER = "CREATE_CLOUD_SERVER"
    SSL_CONFIG = "SSL_CONFIG"
    ATTACH_AGENT_IMAGE = "ATTACH_AGENT_IMAGE"
    DETTACH_AGENT_IMAGE = "DETTACH_AGENT_IMAGE"
    FORMAT_DISK_LINUX = "FORMAT_DISK_LINUX"
    FORMAT_DISK_LINUX_FILE = "FORMAT_DISK_LINUX_FILE"
    FORMAT_DISK_LINUX_BLOCK = "FORMAT_DISK_LINUX_BLOCK"
    FORMAT_DISK_WINDOWS = "FORMAT_DISK_WINDOWS"
    MIGRATE_LINUX_FILE = "MIGRATE_LINUX_FILE"
    MIGRATE_LINUX_BLOCK = "MIGRATE_LINUX_BLOCK"
    MIGRATE_WINDOWS_BLOCK = "MIGRATE_WINDOWS_BLOCK"
    SYNC_LINUX_FILE = "SYNC_LINUX_FILE"
    SYNC_LINUX_BLOCK = "SYNC_LINUX_BLOCK"
    SYNC_WINDOWS_BLOCK = "SYNC_WINDOWS_BLOCK"
    CONFIGURE_LINUX = "CONFIGURE_LINUX"
    CONFIGURE_LINUX_BLOCK = "CONFIGURE_LINUX_BLOCK"
    CONFIGURE_LINUX_FILE = "CONFIGURE_LINUX_FILE"
    CONFIGURE_WINDOWS = "CONFIGURE_WINDOWS"
    CLONE_VM = "CLONE_VM"


class TaskOperation(WireEnum):
    """`operation` of `POST /v3/tasks/{id}/action`."""

    start = "start"
    stop = "stop"
    test = "test"
    cutover = "cutover"
    clone_test = "clone_test"
    restart = "restart"
    network_check = "network_check"
    skip = "skip"
    clear = "clear"
    migration_test = "migration_test"
    error_for_overspeed = "error_for_overspeed"


class ConfigKey(WireEnum):
    MIGRATE_EXCLUDE_DIR = "MIGRATE_EXCLUDE_DIR"
    SYNC_EXCLUDE_DIR = "SYNC_EXCLUDE_DIR"
    ONLY_SYNC_DIR = "ONLY_SYNC_DIR"
    CONSISTENCY_DIR = "CONSISTENCY_DIR"
    CONSISTENCY_DIR_ILLEGAL = "CONSISTENCY_DIR_ILLEGAL"
    LINUX_BLOCK_COMPRESS_THREAD_NUM = "LINUX_BLOCK_COMPRESS_THREAD_NUM"
    MIGRATE_DST_IP = "MIGRATE_DST_IP"
    LINUX_BLOCK_CACHE_SIZE = "LINUX_BLOCK_CACHE_SIZE"
    LINUX_CPU_LIMIT = "LINUX_CPU_LIMIT"
    LINUX_MEM_LIMIT = "LINUX_MEM_LIMIT"
    LINUX_IO_LIMIT = "LINUX_IO_LIMIT"
    NUM_PROCESS_MIGRATE = "NUM_PROCESS_MIGRATE"
    NUM_PROCESS_SYNC = "NUM_PROCESS_SYNC"
    CONSISTENCY_RECHECK = "CONSISTENCY_RECHECK"
    CONSISTENCY_MODE = "CONSISTENCY_MODE"
    DYNAMIC_PORT = "DYNAMIC_PORT"
    INSTALL_PWD_AGENT = "INSTALL_PWD_AGENT"


class Firmware(WireEnum):
    BIOS = "BIOS"
    UEFI = "UEFI"


class BootLoader(WireEnum):
    GRUB = "GRUB"
    LILO = "LILO"


class PartitionStyle(WireEnum):
    MBR = "MBR"
    GPT = "GPT"


class DeviceUse(WireEnum):
    NORMAL = "NORMAL"
    OS = "OS"
    BOOT = "BOOT"
    VOLUME_GROUP = "VOLUME_GROUP"
    BTRFS = "BTRFS"


class Platform(WireEnum):
    hw = "hw"
    ali = "ali"
    aws = "aws"
    azure = "azure"
    gcp = "gcp"
    tencent = "tencent"
    vmware = "vmware"
    hyperv = "hyperv"
    other = "other"
    default = "default"


class CheckResult(WireEnum):
    OK = "OK"
    WARN = "WARN"
    ERROR = "ERROR"
