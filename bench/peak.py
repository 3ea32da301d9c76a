"""The `llmbus` CLI in a child process that writes its own peak RSS at exit (bench/engine.py, bench/student.py)."""

# VmHWM belongs to the process's own memory since its exec; the kernel's ru_maxrss would also count the bench's
# memory copied by fork before the exec. Run as: python -c CLI_WITH_PEAK PEAK_FILE llmbus-args...
CLI_WITH_PEAK = """
import atexit, re, sys
PEAK_FILE = sys.argv.pop(1)
def peak():
    status = open("/proc/self/status").read()
    open(PEAK_FILE, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(peak)
from importlib.metadata import entry_points
entry_points(group="console_scripts", name="llmbus")[0].load()()  # the `llmbus` command
"""
