"""scripts/image/common.sh: the block both image builds share (build.sh for `make image`, local-images.sh for
`shoal local up --runtime containerd`): one digest of a build's inputs, of one length, and one freshness check."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "image"


def common(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'IMAGE_SCRIPT=test; . scripts/image/common.sh; {command}', "bash", *args],
                          cwd=REPO, capture_output=True, text=True)


def test_both_builds_take_the_shared_block_and_define_none_of_it_again():
    for script in ("build.sh", "local-images.sh"):
        text = (SCRIPTS / script).read_text()
        assert ". scripts/image/common.sh" in text, script
        for own in ("digest()", "fresh()", "say()", "die()", "SUITE=", "MIRRORS=("):
            assert own not in text, f"{script} defines {own} again"


def test_the_digest_has_one_length_and_follows_the_inputs(tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("python3\n")
    first = common('digest "$1"', str(inputs)).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", first), first
    inputs.write_text("python3\ncurl\n")
    assert common('digest "$1"', str(inputs)).stdout.strip() not in ("", first)


def test_a_stage_is_fresh_only_with_its_digest_recorded_and_what_it_made_there(tmp_path):
    stamp, made = tmp_path / "stage.stamp", tmp_path / "stage.oci.tar"
    stamp.write_text("0123456789abcdef\n")
    assert common('fresh "$1" 0123456789abcdef', str(stamp)).returncode == 0
    assert common('fresh "$1" 0123456789abcdef "$2"', str(stamp), str(made)).returncode == 1  # not made
    made.write_bytes(b"")
    assert common('fresh "$1" 0123456789abcdef "$2"', str(stamp), str(made)).returncode == 0
    assert common('fresh "$1" fedcba9876543210 "$2"', str(stamp), str(made)).returncode == 1  # other inputs
