"""Used by scripts/deploy-smoke.sh: does the dashboard, reached with basic auth, serve a source's
timeline? Asks Dash's page router for /source/ID, as a browser does after loading the page, and
checks that the page names the source and shows face tracks. Standard library only (it runs on the
host). Exit 0 if so; otherwise 1 with the reason on stderr.

    python3 dashboard_timeline.py http://127.0.0.1:18050 USER:PASSWORD SOURCE_ID SOURCE_NAME
"""

import base64
import json
import sys
import urllib.error
import urllib.request


def main(base: str, credentials: str, source_id: str, name: str) -> int:
    auth = "Basic " + base64.b64encode(credentials.encode()).decode()

    def fetch(path: str, body: dict | None = None, with_auth: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"} if body else {})
        if with_auth:
            request.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode("utf-8", "replace")

    status, _ = fetch(f"/source/{source_id}", with_auth=False)
    if status != 401:
        print(f"without credentials /source/{source_id} answered {status}, not 401", file=sys.stderr)
        return 1
    status, page = fetch(f"/source/{source_id}")
    if status != 200 or "_dash-config" not in page:
        print(f"/source/{source_id} answered {status}", file=sys.stderr)
        return 1
    status, text = fetch("/_dash-dependencies")
    router = next((c for c in json.loads(text) if "_pages_content.children" in c["output"]), None)
    if status != 200 or router is None:
        print(f"/_dash-dependencies answered {status} without the page router", file=sys.stderr)
        return 1
    values = {"pathname": f"/source/{source_id}", "search": ""}
    inputs = [{**i, "value": values.get(i["property"])} for i in router["inputs"]]
    state = [{**s, "value": None} for s in router.get("state", [])]
    body = {"output": router["output"], "outputs": [
        {"id": part.split(".")[0], "property": part.split(".")[1]}
        for part in router["output"].strip(".").split("...")],
        "inputs": inputs, "state": state, "changedPropIds": ["_pages_location.pathname"]}
    status, text = fetch("/_dash-update-component", body)
    if status != 200:
        print(f"the page router answered {status}: {text[:300]}", file=sys.stderr)
        return 1
    if name not in text:
        print(f"the timeline of source {source_id} does not name {name!r}: {text[:300]}", file=sys.stderr)
        return 1
    if "track" not in text.lower() or "Not found" in text:
        print(f"the timeline of source {source_id} shows no track: {text[:300]}", file=sys.stderr)
        return 1
    print(f"timeline of {name!r}: {len(text)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
