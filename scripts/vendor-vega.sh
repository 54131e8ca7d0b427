#!/usr/bin/env bash
# Writes .dvc/plots.html, the page `dvc plots show` fills (.dvc/config: plots.html_template), with vega,
# vega-lite and vega-embed inlined from their npm packages: DVC's own page loads them from a CDN, so offline
# its interactive plots silently vanish. The versions are the ones DVC's renderer (dvc_render) names.
# Needs npm (Debian's npm package) and the registry; run it again after a DVC upgrade.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
read -r -a packages < <("$root/.venv/bin/python" - <<'PY'
import re
from dvc_render.vega import VegaRenderer
print(" ".join(re.findall(r"npm/([\w-]+@[\d.]+)", VegaRenderer.SCRIPTS)))
PY
)
(cd "$tmp" && npm pack --silent "${packages[@]}" >/dev/null)
{
    printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n'
    printf '    <!-- %s, inlined by scripts/vendor-vega.sh: no network needed -->\n' "${packages[*]}"
    for package in "${packages[@]}"; do
        name="${package%@*}"
        tar -xzf "$tmp/${name}-${package#*@}.tgz" -C "$tmp" "package/build/${name}.min.js"
        printf '    <script type="text/javascript">\n'
        cat "$tmp/package/build/${name}.min.js"
        printf '\n    </script>\n'
    done
    printf '    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n'
    printf '</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'
} > "$root/.dvc/plots.html"
echo "wrote $root/.dvc/plots.html (${packages[*]})"
