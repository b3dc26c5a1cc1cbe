"""The headline figures of each benchmark, read from the output it printed.

``bench/record.py`` keeps a run's output in ``bench/results/``; ``scripts/docs`` uses the patterns here
to put the newest run of each benchmark into the table on the docs' performance page. A pattern's
first group is the figure; a figure a run did not print shows as "-".
"""

# ruff: noqa: RUF001  -- a wide table of display names, whose multiplication signs are meant

from __future__ import annotations

import re

FIGURES: dict[str, list[tuple[str, str]]] = {
    "local": [
        ("10,000 × 4 KiB local → directory, files/s", r"local->directory\s+([\d,]+) files/s"),
        ("one large file local → directory, MB/s", r"MB/s vs cp\+sync\s+([\d,]+)"),
        ("the same, ratio to `cp` + `sync`", r"MB/s vs cp\+sync.*\)\s+([\d.]+)"),
        ("daemon peak RSS, small files, MB", r"RSS, small files\s+(\d+)"),
    ],
    "fanout": [
        ("local → 2 directory targets (fan-out), payloads/s", r"2 directory targets \(fan-out\)\s+([\d,]+)"),
        ("the same, ratio to 1 target in the same run", r"2 directory targets \(fan-out\)\s+[\d,]+\s+([\d.]+)"),
    ],
    "store": [
        ("local → directory with SQLite, µs per payload", r"^sqlite\s+(\d+)\s+\d+\s+\d+\s+\d+"),
        ("the same with PostgreSQL, µs per payload", r"^postgres\s+(\d+)\s+\d+\s+\d+\s+\d+"),
        ("SQLite store alone, µs per item", r"^sqlite\s+(\d+)\s+\d+\s*$"),
        ("PostgreSQL store alone, µs per item", r"^postgres\s+(\d+)\s+\d+\s*$"),
    ],
    "http": [
        ("HTTP target alone, ratio to a plain aiohttp client", r"HttpTarget alone.*?\]\s+([\d.]+) \["),
        ("local → http, payloads/s", r"after: keep.*?32\s+([\d,]+)"),
        ("local → http, ratio to a plain aiohttp client", r"after: keep.*?\]\s+([\d.]+) \["),
        ("local → http, CPU ms per payload", r"after: keep.*\s([\d.]+) \[[\d.-]+\]$"),
    ],
    "health": [
        ("`/healthz` median ms while a local flow moves payloads", r"while moving.*\(local\)\s+([\d.]+)"),
        ("`/healthz` median ms while a RabbitMQ flow moves messages", r"while moving.*\(rabbitmq\)\s+([\d.]+)"),
    ],
    "page": [
        (
            "daemon CPU per payload with the status page open, ratio to without",
            r"with the page / without\s+([\d.]+)x",
        ),
        (
            "the same, ratio to Chromium open on a blank page (the page's own cost)",
            r"with the page / Chromium on a blank page\s+([\d.]+)x",
        ),
        (
            "daemon CPU per refresh of the page, 100 flows and 100,000 ledger items, ms",
            r"daemon CPU per /page/live refresh.*?\)\s+([\d.]+)",
        ),
        ("status page HTML, 100 flows and 100,000 ledger items, median ms", r"GET / signed in, HTML.*?\)\s+([\d.]+)"),
        (
            "the same page in Chromium to its load event, median ms",
            r"Chromium: the page to the load event.*?\)\s+([\d.]+)",
        ),
    ],
    "traces": [
        (
            "daemon CPU per file with traces on, ratio to off",
            r"daemon CPU s per 1,000 files\s+[\d.]+\s+[\d.]+\s+([\d.]+)",
        ),
        (
            "local → directory with traces on, files/s ratio to off",
            r"local->directory, files/s\s+[\d,]+\s+[\d,]+\s+([\d.]+)",
        ),
    ],
    "rabbitmq": [
        ("RabbitMQ → directory, msgs/s", r"c\. conveyor -> directory:\s+([\d,]+)"),
        ("RabbitMQ → directory, CPU s per 1,000 msgs", r"c\. conveyor -> directory:.*\(([\d.]+) CPU"),
        (
            "RabbitMQ → directory, ratio to plain aio-pika with the same durable writes, median of rounds",
            r"c / f per round, msgs/s: .*median ([\d.]+)x",
        ),
        ("the same, CPU per message, median of rounds", r"c / f per round, CPU per message: .*median ([\d.]+)x"),
        (
            "the plain consumer with those writes, CPU s per 1,000 msgs",
            r"f\. plain aio-pika consumer.*?:.*\(([\d.]+) CPU",
        ),
        (
            "RabbitMQ → RabbitMQ relay, ratio to plain aio-pika",
            r"d\. conveyor -> rabbitmq \(relay\)\s+[\d,]+\s+([\d.]+)x",
        ),
        ("the relay, CPU s per 1,000 msgs", r"d\. conveyor -> rabbitmq \(relay\):.*\(([\d.]+) CPU"),
    ],
    "pubsub": [
        ("Pub/Sub source alone, ratio to the plain subscriber", r"PubsubSource alone.*?\s([\d.]+)x"),
        (
            "Pub/Sub → directory, CPU ms per message",
            r"conveyor -> directory\s+\d+\s+\d+\s+[\d.]+x\s+\d+\s+[\d.]+x\s+([\d.]+)",
        ),
        (
            "Pub/Sub → directory, CPU per message, ratio to a plain subscriber writing the same files",
            r"conveyor -> directory\s+\d+\s+\d+\s+[\d.]+x\s+\d+\s+[\d.]+x\s+[\d.]+\s+([\d.]+)x",
        ),
        (
            "that plain subscriber, CPU ms per message",
            r"plain subscriber, the same durable files.*?\s+\d+\s+\d+\s+[\d.]+x\s+\d+\s+[\d.]+x\s+([\d.]+)",
        ),
        (
            "Pub/Sub → Pub/Sub topic, CPU ms per message",
            r"conveyor -> pubsub topic\s+\d+\s+\d+\s+[\d.]+x\s+\d+\s+[\d.]+x\s+([\d.]+)",
        ),
    ],
    "ftp": [
        ("FTP 1 GiB download, ratio to curl", r"^ftp download 1 GiB.*?\]\s+[\d,]+ \[[\d,-]+\]\s+([\d.]+) \["),
        ("FTP 1 GiB upload, ratio to curl", r"^ftp upload 1 GiB.*?\]\s+[\d,]+ \[[\d,-]+\]\s+([\d.]+) \["),
        ("FTPS 1 GiB download, ratio to curl", r"ftps download 1 GiB.*?\]\s+[\d,]+ \[[\d,-]+\]\s+([\d.]+) \["),
        ("FTPS 1 GiB upload, ratio to curl", r"ftps upload 1 GiB.*?\]\s+[\d,]+ \[[\d,-]+\]\s+([\d.]+) \["),
        ("FTP poll of 200 × 4 KiB, files/s", r"ftp poll .*\(small, .*: (\d+) files/s"),
        ("FTPS poll of 200 × 4 KiB, files/s", r"ftps poll .*\(small, .*: (\d+) files/s"),
    ],
    "replicas": [
        ("SFTP files, 1 replica on PostgreSQL, files/s", r"^sftp files\s+1\s+(\d+)"),
        ("the same, 3 replicas", r"^sftp files\s+3\s+(\d+)"),
        ("RabbitMQ messages, 1 replica on PostgreSQL, msgs/s", r"^rabbitmq messages\s+1\s+(\d+)"),
        ("the same, 3 replicas", r"^rabbitmq messages\s+3\s+(\d+)"),
        ("1 replica, CPU ms per message", r"^rabbitmq messages\s+1\s+\d+\s+[\d.]+\s+[\d.]+\s+([\d.]+)"),
    ],
    "select": [
        ("poll of 100,000 local files selecting 1,000 by `include` etc., ms", r"^select\s+(\d+)\s"),
        ("the same with `pattern`, ms", r"^pattern\s+(\d+)\s"),
        ("selection / `pattern`, time per poll", r"select / pattern: time per poll ([\d.]+)x"),
        ("selection / `pattern`, CPU per poll", r"CPU per poll ([\d.]+)x"),
        ("selection / `pattern`, peak RSS", r"peak RSS ([\d.]+)x"),
    ],
    "sftp": [
        ("SFTP download into the spool, ratio to OpenSSH `sftp`", r"SftpInstance.download -> spool\s+\d+\s+([\d.]+)"),
        ("`conveyor run` SFTP → directory, ratio to OpenSSH `sftp`", r"sftp flow -> directory target\s+\d+\s+([\d.]+)"),
        ("SFTP upload, ratio to OpenSSH `sftp`", r"SftpInstance.upload, spooled body\s+\d+\s+([\d.]+)"),
        ("`conveyor run` local → SFTP, ratio to OpenSSH `sftp`", r"local flow -> sftp target\s+\d+\s+([\d.]+)"),
        ("SFTP list + download of 200 × 4 KiB, files/s", r"list\+download: (\d+) files/s"),
        ("`conveyor run` with 100 idle SFTP flows, % of one core", r"connector only\), ([\d.]+) %"),
        ("100 idle SFTP pollers, connector alone, % of one core", r"idle pollers every 5 s: ([\d.]+) %"),
    ],
    "sftp_cold": [
        (
            "`conveyor run` SFTP → directory from the daemon's start, ratio to OpenSSH `sftp` + fsync",
            r"cold run sftp -> directory.* ratio ([\d.]+)",
        ),
        ("the same, conveyor's seconds (median)", r"cold run sftp -> directory.*: conveyor ([\d.]+) s"),
    ],
    "ftp_cold": [
        (
            "`conveyor run` FTP → directory from the daemon's start, ratio to curl + fsync",
            r"cold run ftp -> directory.* ratio ([\d.]+)",
        ),
        (
            "`conveyor run` FTPS → directory from the daemon's start, ratio to curl + fsync",
            r"cold run ftps -> directory.* ratio ([\d.]+)",
        ),
    ],
    "reach": [
        ("SFTP 256 MiB download direct, ratio to OpenSSH `sftp`", r"^direct\s+\d+\s+\d+\s+([\d.]+)"),
        ("the same through a SOCKS5 proxy", r"^SOCKS5 proxy\s+\d+\s+\d+\s+([\d.]+)"),
        ("the same through one jump host", r"^one jump host\s+\d+\s+\d+\s+([\d.]+)"),
        ("direct, conveyor MiB/s", r"^direct\s+\d+\s+(\d+)"),
        ("through a SOCKS5 proxy, conveyor MiB/s", r"^SOCKS5 proxy\s+\d+\s+(\d+)"),
        ("through one jump host, conveyor MiB/s", r"^one jump host\s+\d+\s+(\d+)"),
        ("goal conveyor ≥ 0.9 × OpenSSH on each path", r"^goal: .*?: (pass|FAIL)"),
    ],
    "pgp": [
        ("PGP decrypt of 1 GiB local → directory, MB/s", r"MB/s vs gpg\s+([\d,]+)"),
        ("the same, ratio to `gpg --decrypt` to a file", r"MB/s vs gpg\s+.*\)\s+([\d.]+)"),
        ("daemon peak RSS, MB", r"daemon peak RSS\s+(\d+)"),
    ],
    "collect": [
        ("RabbitMQ → collect (ndjson, 1,000 a file) → directory, msgs/s", r"ndjson files of .*?\(median\)\s+([\d,]+)"),
        ("the same, ratio to a plain aio-pika loop", r"ndjson files of .*?\(median\)\s+[\d,]+\s+[\d,]+\s+([\d.]+)"),
        ("daemon peak RSS, MB", r"daemon peak RSS \(max of rounds\)\s+(\d+)"),
        ("daemon CPU seconds per 1,000 messages", r"daemon CPU seconds per 1,000 messages \(median\)\s+([\d.]+)"),
    ],
    "wan": [
        ("SFTP download at 50 ms round trip, MiB/s", r"download, streams unset\s+([\d.]+)"),
        ("the same, OpenSSH `sftp`, MiB/s", r"^OpenSSH sftp get.*?\)\s+([\d.]+)"),
        ("the same, ratio to OpenSSH `sftp`", r"^50 ms(?: download)?: conveyor.*? / OpenSSH sftp: ([\d.]+)x"),
        (
            "the same, ratio to rclone with 4 streams",
            r"^50 ms(?: download)?: conveyor.*? / rclone 4 streams: ([\d.]+)x",
        ),
        ("at 100 ms, ratio to OpenSSH `sftp`", r"^100 ms(?: download)?: conveyor.*? / OpenSSH sftp: ([\d.]+)x"),
        (
            "at 100 ms, ratio to rclone with 4 streams",
            r"^100 ms(?: download)?: conveyor.*? / rclone 4 streams: ([\d.]+)x",
        ),
        (
            "1,000 × 16 KiB list + download at 50 ms, ratio to `sftp get -r`",
            r"^50 ms small: conveyor Sftp.*? / OpenSSH sftp: ([\d.]+)x",
        ),
        ("the same, ratio to rclone `--transfers 8`", r"^50 ms small: conveyor Sftp.*? / rclone: ([\d.]+)x"),
        (
            "the same through `conveyor run`, ratio to `sftp get -r`",
            r"^50 ms small: conveyor run.*? / OpenSSH sftp: ([\d.]+)x",
        ),
        ("the same through `conveyor run`, ratio to rclone", r"^50 ms small: conveyor run.*? / rclone: ([\d.]+)x"),
        ("SFTP upload at 50 ms, ratio to OpenSSH `sftp`", r"^50 ms upload: .*? / OpenSSH sftp: ([\d.]+)x"),
        ("the same, ratio to rclone", r"^50 ms upload: .*? / rclone: ([\d.]+)x"),
        (
            "`conveyor run` SFTP → directory at 50 ms, ratio to `sftp` + flush",
            r"^50 ms run: .*? / OpenSSH sftp: ([\d.]+)x",
        ),
        ("the same, ratio to rclone 4 streams + flush", r"^50 ms run: .*? / rclone: ([\d.]+)x"),
    ],
    "flows": [
        ("1,000 sftp flows (200 instances): start to all listed, s", r"start to all flows polled, s\s+([\d.]+)"),
        ("the same, idle CPU, % of one core", r"idle CPU, % of one core\s+([\d.]+)"),
        ("the same, idle RSS, MB", r"RSS idle, MB\s+(\d+)"),
        ("a file in each of the 1,000 folders, all delivered, s", r"files delivered after the drop, s\s+([\d.]+)"),
    ],
    "wan_ftp": [
        ("FTP download at 50 ms round trip, MiB/s", r"download, streams unset\s+([\d.]+)"),
        ("the same, curl, MiB/s", r"^curl \(one connection\)\s+([\d.]+)"),
        ("the same, ratio to curl", r"^50 ms: conveyor / curl: ([\d.]+)x"),
        ("the same, ratio to lftp `pget -n 4`", r"^50 ms: conveyor / lftp pget -n 4: ([\d.]+)x"),
        ("at 100 ms, ratio to curl", r"^100 ms: conveyor / curl: ([\d.]+)x"),
        ("at 100 ms, ratio to lftp `pget -n 4`", r"^100 ms: conveyor / lftp pget -n 4: ([\d.]+)x"),
    ],
}


def figures(bench: str, lines: list[str]) -> list[tuple[str, str]]:
    """(figure name, value) for each headline figure of ``bench`` found in ``lines``."""
    out = []
    for name, pattern in FIGURES.get(bench, []):
        value = "-"
        for line in lines:
            m = re.search(pattern, line)
            if m:
                value = m.group(1)
                break
        out.append((name, value))
    return out
