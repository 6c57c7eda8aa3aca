"""Small benchmark folders written in each benchmark's published file format.

The real MedQA, MedMCQA … files are not redistributable here, so each writer lays out a few
rows exactly as the published release does (file names, columns, encodings); the loaders
then read them like the real thing. PubMedQA and VQA-RAD are read from ../shared/data.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
PUBMEDQA = SHARED_DATA / "pubmedqa"
VQA_RAD = SHARED_DATA / "vqa-rad"


def png_bytes(shade: int = 128, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 255 - shade, 64)).save(buf, format="PNG")
    return buf.getvalue()


def write_image(path: Path, shade: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(shade))


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def medqa(root: Path) -> None:
    _jsonl(
        root / "4_options/phrases_no_exclude_test.jsonl",
        [
            {
                "question": f"A 23-year-old woman presents with symptom {i}. Which drug is best?",
                "answer": "Ceftriaxone",
                "options": {
                    "A": "Ampicillin",
                    "B": "Ceftriaxone",
                    "C": "Doxycycline",
                    "D": "Nitrofurantoin",
                },
                "meta_info": "step2&3",
                "answer_idx": "B",
                "metamap_phrases": ["woman"],
            }
            for i in range(3)
        ],
    )


def headqa(root: Path) -> None:
    exam = {
        "name": "Cuaderno_2013_1_M",
        "year": "2013",
        "category": "medicine",
        "data": [
            {
                "qid": 1,
                "qtext": "Which vitamin deficiency causes scurvy?",
                "ra": 3,
                "image": "",
                "answers": [
                    {"aid": 1, "atext": "Vitamin A"},
                    {"aid": 2, "atext": "Vitamin B12"},
                    {"aid": 3, "atext": "Vitamin C"},
                    {"aid": 4, "atext": "Vitamin D"},
                ],
            },
            {
                "qid": 2,
                "qtext": "Regarding the image, which structure is marked?",
                "ra": 1,
                "image": "images/x.png",
                "answers": [{"aid": 1, "atext": "Aorta"}, {"aid": 2, "atext": "Vena cava"}],
            },
        ],
    }
    path = root / "HEAD_EN/test_HEAD_EN.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"version": "1.0", "language": "en", "exams": {"Cuaderno_2013_1_M": exam}})
    )


def medmcqa(root: Path) -> None:
    # The official test.json has no answers (cop missing): evaluation falls back to dev.json.
    base = {
        "opa": "Liver",
        "opb": "Kidney",
        "opc": "Spleen",
        "opd": "Heart",
        "subject_name": "Anatomy",
        "topic_name": "Abdomen",
        "choice_type": "single",
        "exp": "",
    }
    _jsonl(root / "test.json", [{**base, "id": "t1", "question": "Unlabelled?"}])
    _jsonl(
        root / "dev.json",
        [{**base, "id": f"d{i}", "question": f"Largest organ {i}?", "cop": 1} for i in range(2)],
    )


def medxpertqa(root: Path) -> None:
    opts = {
        "A": "Amoxicillin",
        "B": "Aspirin",
        "C": "Atenolol",
        "D": "Azithromycin",
        "E": "Alprazolam",
    }
    question = "A 60-year-old man has chest pain. Which drug?\nAnswer Choices: (A) Amoxicillin (B) Aspirin (C) Atenolol (D) Azithromycin (E) Alprazolam"
    _jsonl(
        root / "Text/test.jsonl",
        [
            {
                "id": "Text-0",
                "question": question,
                "options": opts,
                "label": "B",
                "medical_task": "Treatment",
                "body_system": "Cardiovascular",
                "question_type": "Reasoning",
            }
        ],
    )
    _jsonl(
        root / "MM/test.jsonl",
        [
            {
                "id": "MM-0",
                "question": question,
                "options": opts,
                "label": "C",
                "images": ["MM-0-a.jpeg"],
                "medical_task": "Diagnosis",
                "body_system": "Cardiovascular",
                "question_type": "Understanding",
            }
        ],
    )
    write_image(root / "images/MM-0-a.jpeg")


def mmlu_pro(root: Path) -> None:
    rows = [
        {
            "question_id": 70 + i,
            "question": f"Which nerve innervates muscle {i}?",
            "options": [f"nerve {j}" for j in range(10)],
            "answer": "J",
            "answer_index": 9,
            "cot_content": "",
            "category": cat,
            "src": "ori_mmlu-anatomy",
        }
        for i, cat in enumerate(["health", "law", "health"])
    ]
    _parquet(root / "data/test-00000-of-00001.parquet", rows)


def mmlu_medical(root: Path) -> None:
    from medsft_pipelines.eval.benchmarks.mmlu_medical import SUBJECTS

    for subject in SUBJECTS:
        path = root / f"test/{subject}_test.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerow([f"A {subject} question?", "one", "two", "three", "four", "C"])


def mmmu_pro(root: Path) -> None:
    rows = [
        {
            "id": f"test_{subj}_1",
            "question": "What does <image 1> show?",
            "options": str([f"finding {j}" for j in range(10)]),
            "explanation": "",
            "image_1": {"bytes": png_bytes(), "path": "a.png"},
            "image_2": None,
            "image_3": None,
            "image_4": None,
            "image_5": None,
            "image_6": None,
            "image_7": None,
            "img_type": "['Medical Images']",
            "answer": "D",
            "topic_difficulty": "Medium",
            "subject": subj,
        }
        for subj in ["Clinical_Medicine", "Art", "Pharmacy"]
    ]
    _parquet(root / "standard (10 options)/test-00000-of-00001.parquet", rows)


def nejm(root: Path) -> None:
    _csv(
        root / "test.csv",
        [
            {
                "date": "2023-01-05",
                "question": "What is the diagnosis?",
                "option_A": "Psoriasis",
                "option_B": "Eczema",
                "option_C": "Tinea",
                "option_D": "Lupus",
                "option_E": "Scabies",
                "answer": "C",
                "image": "2023-01-05.png",
            },
        ],
    )
    write_image(root / "images/2023-01-05.png")


def pmc_vqa(root: Path) -> None:
    _csv(
        root / "test_2.csv",
        [
            {
                "Figure_path": f"PMC{i}_fig1.jpg",
                "Question": "What imaging modality is shown?",
                "Answer": "CT",
                "Choice A": "A:CT ",
                "Choice B": "B:MRI ",
                "Choice C": "C:X-ray ",
                "Choice D": "D:Ultrasound ",
                "Answer_label": "A",
            }
            for i in range(2)
        ],
    )
    for i in range(2):
        write_image(root / f"images/PMC{i}_fig1.jpg")


def slake(root: Path) -> None:
    rows = [
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "Is the lung healthy?",
            "answer": "No",
            "q_lang": "en",
            "location": "Lung",
            "modality": "CT",
            "answer_type": "CLOSED",
            "base_type": "vqa",
            "content_type": "Abnormality",
            "triple": ["vhead", "_", "_"],
            "qid": 11,
        },
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "Which organ is abnormal?",
            "answer": "Left Lung",
            "q_lang": "en",
            "location": "Lung",
            "modality": "CT",
            "answer_type": "OPEN",
            "base_type": "vqa",
            "content_type": "Organ",
            "triple": ["vhead", "_", "_"],
            "qid": 12,
        },
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "肺是否健康?",
            "answer": "否",
            "q_lang": "zh",
            "location": "Lung",
            "modality": "CT",
            "answer_type": "CLOSED",
            "base_type": "vqa",
            "content_type": "Abnormality",
            "triple": ["vhead", "_", "_"],
            "qid": 13,
        },
    ]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False))
    write_image(root / "imgs/xmlab1/source.jpg")


def brain_tumor(root: Path) -> None:
    for i, cls in enumerate(["glioma", "meningioma", "notumor", "pituitary"]):
        write_image(root / f"Testing/{cls}/Te-{cls[:2]}_000{i}.jpg", shade=40 * i)


def bcss(root: Path) -> None:
    for i, cls in enumerate(["tumor", "stroma"]):
        write_image(root / f"test/{cls}/patch_{i}.png", shade=60 * i)


def coronahack(root: Path) -> None:
    rows = [
        {
            "": "0",
            "X_ray_image_name": "IM-0001.jpeg",
            "Label": "Normal",
            "Dataset_type": "TEST",
            "Label_2_Virus_category": "",
            "Label_1_Virus_category": "",
        },
        {
            "": "1",
            "X_ray_image_name": "person1_virus.jpeg",
            "Label": "Pnemonia",
            "Dataset_type": "TEST",
            "Label_2_Virus_category": "",
            "Label_1_Virus_category": "Virus",
        },
        {
            "": "2",
            "X_ray_image_name": "person2_bacteria.jpeg",
            "Label": "Pnemonia",
            "Dataset_type": "TRAIN",
            "Label_2_Virus_category": "",
            "Label_1_Virus_category": "bacteria",
        },
    ]
    _csv(root / "Chest_xray_Corona_Metadata.csv", rows)
    for name in ["IM-0001.jpeg", "person1_virus.jpeg"]:
        write_image(
            root / f"Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/test/{name}"
        )


def aptos(root: Path) -> None:
    _csv(
        root / "test.csv",
        [
            {"id_code": "000c1434d8d7", "diagnosis": "2"},
            {"id_code": "001639a390f0", "diagnosis": "4"},
        ],
    )
    for code in ["000c1434d8d7", "001639a390f0"]:
        write_image(root / f"test_images/{code}.png")


def messidor2(root: Path) -> None:
    _csv(
        root / "messidor_data.csv",
        [
            {
                "image_id": "20051020_43808_0100_PP.png",
                "adjudicated_dr_grade": "0.0",
                "adjudicated_dme": "0.0",
                "adjudicated_gradable": "1",
            },
            {
                "image_id": "20051020_43832_0100_PP.png",
                "adjudicated_dr_grade": "",
                "adjudicated_dme": "",
                "adjudicated_gradable": "0",
            },
            {
                "image_id": "IM000001.JPG",
                "adjudicated_dr_grade": "3.0",
                "adjudicated_dme": "1.0",
                "adjudicated_gradable": "1",
            },
        ],
    )
    for name in ["20051020_43808_0100_PP.png", "IM000001.JPG"]:
        write_image(root / f"IMAGES/{name}")


#: benchmark name -> (writer, number of items its test split must load)
WRITERS = {
    "medqa": (medqa, 3),
    "headqa": (headqa, 1),
    "medmcqa": (medmcqa, 2),
    "medxpertqa-text": (medxpertqa, 1),
    "medxpertqa-mm": (medxpertqa, 1),
    "mmlu-pro-health": (mmlu_pro, 2),
    "mmlu-medical": (mmlu_medical, 6),
    "mmmu-pro-health": (mmmu_pro, 2),
    "nejm": (nejm, 1),
    "pmc-vqa": (pmc_vqa, 2),
    "slake": (slake, 2),
    "brain-tumor": (brain_tumor, 4),
    "bcss": (bcss, 2),
    "coronahack": (coronahack, 2),
    "aptos": (aptos, 2),
    "messidor-2": (messidor2, 2),
}
