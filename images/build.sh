#!/usr/bin/env bash
# Build the three llmfab images with the names the operator runs by default
# (llmfab/operator/settings.py: IMAGE_REPOSITORY and llmfab.__version__):
#   ghcr.io/llmfab/operator:<version>, ghcr.io/llmfab/trainer:<version>, ghcr.io/llmfab/serving:<version>
#
# Usage: images/build.sh [--print] [IMAGE...]     (IMAGE: operator, trainer, serving; default all)
#   --print   only print the tags it would build (the tests compare them with the operator's defaults)
# Environment: DOCKER (default docker; podman works), IMAGE_REPOSITORY (default ghcr.io/llmfab).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repository=${IMAGE_REPOSITORY:-ghcr.io/llmfab}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/llmfab/__init__.py")
[[ -n $version ]] || { echo "error: no __version__ in $repo/llmfab/__init__.py" >&2; exit 1; }

print=false
if [[ ${1:-} == --print ]]; then
    print=true
    shift
fi
images=("$@")
[[ ${#images[@]} -gt 0 ]] || images=(operator trainer serving)

if ! $print; then
    docker=${DOCKER:-docker}
    command -v "$docker" >/dev/null || {
        echo "error: $docker not found: building the images needs a Docker engine (or DOCKER=podman)" >&2
        exit 1
    }
    revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
fi
for image in "${images[@]}"; do
    [[ -f $repo/images/$image/Dockerfile ]] || { echo "error: no image $image (images/$image/Dockerfile)" >&2; exit 1; }
    tag=$repository/$image:$version
    if $print; then
        echo "$tag"
    else
        "$docker" build --file "$repo/images/$image/Dockerfile" --build-arg VERSION="$version" \
            --build-arg REVISION="$revision" --tag "$tag" "$repo"
    fi
done
