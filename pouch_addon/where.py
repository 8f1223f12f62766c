"""Print the path of pouch's mitmproxy addon script: ``mitmdump -s "$(python -m pouch_addon.where)"``."""

from pathlib import Path

SCRIPT = Path(__file__).with_name("mitm_entry.py")

if __name__ == "__main__":
    print(SCRIPT)
