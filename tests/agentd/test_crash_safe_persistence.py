import json
import subprocess
import sys

from agentd.config import AgentSettings
from common.properties import AgentProperties
from tests.support.kill_while_writing import LISTS

HEADER = "# hv-1 agent\n\nguid=g-1\nzone=z1\n"


def test_sigkill_while_writing_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "agent.properties"
    path.write_text(f"{HEADER}host={LISTS[0]}\nworkers=4\n")
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.kill_while_writing", str(path), "300"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["bad"] == []
    assert report["old"] + report["new"] == 300
    assert report["old"] > 0 and report["new"] > 0  # the kills did land mid-stream
    props = AgentProperties.load(path)
    assert props.get("guid") == "g-1" and props.get("workers") == "4"
    assert path.read_text().startswith(HEADER)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "agent.properties"]
    # a kill between mkstemp and rename can leave a temporary file; never a broken main file
    assert all(name.startswith(".agent.properties.") for name in leftovers)
    # ...which the agent removes when it starts
    AgentSettings.from_properties(path)
    assert [p.name for p in tmp_path.iterdir()] == ["agent.properties"]
