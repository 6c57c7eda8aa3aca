"""The multimodal classification benchmarks: one image, the class labels as options.

* Brain Tumor MRI (Kaggle, masoudnickparvar/brain-tumor-mri-dataset): ``Testing/<class>/*.jpg``.
* BCSS patches (Breast Cancer Semantic Segmentation, tissue-class patches): ``<split>/<class>/*.png``.
* CoronaHack chest X-ray (Kaggle, praveengovi/coronahack-chest-xraydataset):
  ``Chest_xray_Corona_Metadata.csv`` (``X_ray_image_name, Label, Dataset_type,
  Label_1_Virus_category``) + ``Coronahack-Chest-XRay-Dataset/<train|test>/<image>``.
* APTOS 2019 blindness detection (Kaggle): ``<split>.csv`` (``id_code, diagnosis`` 0-4) +
  ``<split>_images/<id_code>.png`` (the competition's test labels are private, so an
  evaluation split is a labelled CSV of held-out training images).
* MESSIDOR-2 (Krause et al. adjudicated grades): ``messidor_data.csv`` (``image_id,
  adjudicated_dr_grade, adjudicated_gradable``) + ``IMAGES/<image_id>``.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Distribution, Family
from ..loaders import choice_item, image_folder_items, lettered
from ..registry import BenchmarkInfo, Loader, register

DR_GRADES = {
    "0": "no diabetic retinopathy",
    "1": "mild non-proliferative diabetic retinopathy",
    "2": "moderate non-proliferative diabetic retinopathy",
    "3": "severe non-proliferative diabetic retinopathy",
    "4": "proliferative diabetic retinopathy",
}
_DR_OPTIONS = lettered(list(DR_GRADES.values()))
_DR_LETTER = dict(zip(DR_GRADES, _DR_OPTIONS, strict=True))
DR_QUESTION = "What is the diabetic retinopathy grade of this fundus photograph?"

BRAIN_TUMOR_CLASSES = {
    "glioma": "glioma",
    "meningioma": "meningioma",
    "notumor": "no tumor",
    "pituitary": "pituitary tumor",
}
BCSS_CLASSES = {
    "tumor": "tumor",
    "stroma": "stroma",
    "lymphocytic_infiltrate": "lymphocytic infiltrate",
    "necrosis_or_debris": "necrosis or debris",
    "other": "other tissue",
}
CORONAHACK_CLASSES = {
    "normal": "normal",
    "bacteria": "bacterial pneumonia",
    "virus": "viral pneumonia",
}


def load_brain_tumor(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    folder = {"test": "Testing", "train": "Training"}.get(split, split)
    yield from image_folder_items(
        files, folder, BRAIN_TUMOR_CLASSES, "Which finding does this brain MRI show?"
    )


def load_bcss(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    yield from image_folder_items(
        files,
        split,
        BCSS_CLASSES,
        "Which tissue type does this breast cancer histology patch show?",
    )


def load_coronahack(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    options = lettered(list(CORONAHACK_CLASSES.values()))
    letter = dict(zip(CORONAHACK_CLASSES, options, strict=True))
    folder = "Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset"
    folder = folder if files.keys(f"{folder}/") else "Coronahack-Chest-XRay-Dataset"
    for row in files.read_rows(files.find("Chest_xray_Corona_Metadata.csv")):
        if row["Dataset_type"].strip().lower() != split:
            continue
        cls = (
            "normal"
            if row["Label"].strip().lower() == "normal"
            else row["Label_1_Virus_category"].strip().lower()
        )
        if cls not in letter:
            continue  # "Stress-Smoking" pneumonia: too few to be a class of its own
        name = row["X_ray_image_name"]
        yield choice_item(
            name,
            "What does this chest X-ray show?",
            options,
            letter[cls],
            images=(f"{folder}/{split}/{name}",),
        )


def load_aptos(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    for row in files.read_rows(files.find(f"{split}.csv")):
        code = row["id_code"]
        yield choice_item(
            code,
            DR_QUESTION,
            _DR_OPTIONS,
            _DR_LETTER[str(row["diagnosis"]).strip()],
            images=(f"{split}_images/{code}.png",),
        )


def load_messidor2(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    # MESSIDOR-2 is evaluation-only: every gradable image belongs to "test".
    for row in files.read_rows(files.find("messidor_data.csv", f"{split}.csv")):
        if str(row.get("adjudicated_gradable", "1")).strip() not in ("1", "1.0", "True"):
            continue
        grade = str(row["adjudicated_dr_grade"]).strip().split(".")[0]
        yield choice_item(
            row["image_id"],
            DR_QUESTION,
            _DR_OPTIONS,
            _DR_LETTER[grade],
            images=(f"IMAGES/{row['image_id']}",),
        )


# The paper's roles: the training splits of the first four feed the SFT data (in-distribution);
# MESSIDOR-2 has no training split and is evaluation-only (out-of-distribution).
_ROLES: list[tuple[str, Loader, str, Distribution]] = [
    ("brain-tumor", load_brain_tumor, "Brain Tumor MRI, 4 classes (Testing/<class>/)", "in"),
    ("bcss", load_bcss, "BCSS tissue patches, 5 classes (<split>/<class>/)", "in"),
    (
        "coronahack",
        load_coronahack,
        "CoronaHack chest X-ray, normal/bacterial/viral (metadata CSV)",
        "in",
    ),
    ("aptos", load_aptos, "APTOS 2019 DR grade 0-4 (<split>.csv + <split>_images/)", "in"),
    (
        "messidor-2",
        load_messidor2,
        "MESSIDOR-2 adjudicated DR grade 0-4 (messidor_data.csv + IMAGES/), evaluation-only",
        "out",
    ),
]
for _name, _load, _what, _role in _ROLES:
    register(
        BenchmarkInfo(
            name=_name,
            family=Family.CLASSIFICATION,
            load=_load,
            description=_what,
            distribution=_role,
        )
    )
