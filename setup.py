"""retinanet_ext: RetinaNet as Detectron2 components.

torch/torchvision (pinned as a pair in requirements/torch.txt) and detectron2
(installed by tools/install_detectron2.py, from GitHub source or from the
pb1-detectron2 release on PyPI) are set-up steps, not install_requires: the
detectron2 distribution name depends on the route taken.
"""

from setuptools import find_packages, setup

setup(
    name="retinanet_ext",
    version="0.1.0",
    description="RetinaNet (Focal Loss for Dense Object Detection) as Detectron2 components",
    packages=find_packages(
        include=("retinanet_ext", "retinanet_ext.*", "retinanet_ext_cli", "retinanet_ext_cli.*")
    ),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.7",
        "opencv-python-headless>=4.8",
        "numpy>=1.24",
        "Pillow>=10",
        "PyYAML>=6",
        "tabulate",
        "termcolor>=1.1",
        "tqdm>4.29.0",
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6"],
        # retinanet-ext export --format onnx, and predict --model model.onnx
        "export": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
        # predict --model with OpenVINO (reads the exported .onnx)
        "openvino": ["openvino>=2024.0", "onnx>=1.17"],
    },
    # a package of its own, so that `retinanet-ext --help` imports no torch (retinanet_ext_cli)
    entry_points={"console_scripts": ["retinanet-ext=retinanet_ext_cli:main"]},
)
