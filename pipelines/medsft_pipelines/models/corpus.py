"""A small built-in corpus for training the tiny model's tokenizer offline.

Generic English and medical vocabulary written for this project (no patient text, no
benchmark text), so the tokenizer is deterministic, needs no files and splits medical
questions into a realistic number of pieces (a byte-level BPE never fails on unseen text;
a vocabulary closer to the domain only makes token counts closer to a real model's).
"""

from __future__ import annotations

_SENTENCES = """
system user assistant. You are a helpful assistant.
You are a helpful medical assistant. Think step by step, then give the final answer.
The patient presents with fever, cough and shortness of breath for three days.
Which of the following is the most likely diagnosis?
What is the next best step in management?
Answer: A
Answer: B
Answer: C
Answer: D
Answer: E
The answer is yes. The answer is no. The answer is maybe.
Let me think about this step by step before giving the final answer.
First, identify the key findings in the question and the image.
Second, consider the differential diagnosis and rule out the unlikely options.
Therefore, the correct option is the one that explains all of the findings.
The chest radiograph shows a consolidation in the right lower lobe.
The computed tomography scan of the abdomen shows a mass in the liver.
The magnetic resonance image of the brain shows an infarct in the left hemisphere.
The ultrasound shows a normal gallbladder without stones.
The electrocardiogram shows sinus rhythm with a prolonged QT interval.
Blood pressure is 120/80 mmHg, heart rate is 88 beats per minute, temperature is 38.5 C.
Laboratory studies show a hemoglobin of 10.2 g/dL and a white blood cell count of 14,000/mm3.
The serum sodium is 132 mEq/L, potassium 4.1 mEq/L, creatinine 1.4 mg/dL.
Is there evidence of pneumothorax? Is the heart enlarged? Are the lungs clear?
Which organ is shown in this image? Where is the lesion located?
Is this an axial, coronal or sagittal plane? What imaging modality was used?
The mechanism of action of this drug is inhibition of the enzyme.
Antibiotics, antivirals, anticoagulants, beta blockers, diuretics and statins are common drugs.
Diabetes mellitus, hypertension, asthma, pneumonia, sepsis, stroke and myocardial infarction.
Tuberculosis, malaria, influenza, hepatitis, cirrhosis, pancreatitis and appendicitis.
Carcinoma, lymphoma, leukemia, melanoma, sarcoma, adenoma and metastasis.
The kidney, liver, lung, heart, brain, spleen, pancreas, bowel, bladder and bone.
Neurons, hepatocytes, cardiomyocytes, lymphocytes, neutrophils and macrophages.
Mitochondria, ribosomes, the nucleus, the membrane, proteins, enzymes and receptors.
Randomized controlled trials, cohort studies, case reports and systematic reviews.
The study found a significant association between the exposure and the outcome.
Results were statistically significant with a p value below 0.05 and a 95% confidence interval.
Does the treatment improve survival in patients with chronic disease?
Options: (A) aspirin (B) heparin (C) warfarin (D) clopidogrel (E) none of the above
A 45-year-old man, a 30-year-old woman, a 6-year-old child and an 80-year-old adult.
The findings are consistent with an acute inflammatory process.
Classify the image into one of the following categories: normal, benign, malignant.
Grade the diabetic retinopathy from 0 to 4. The tumor type is glioma, meningioma or pituitary.
In summary, the evidence supports the diagnosis, so the final answer follows.
"""

_WORDS = """
abdomen abscess acute adenocarcinoma adrenal airway albumin allergy alveolar anatomy anemia
aneurysm angiography ankle anterior antibody antigen aorta aortic apex arrhythmia artery
atrial atrophy autoimmune bacteria benign bilateral biopsy bleeding blood bone bowel brain
breast bronchial calcification cancer cardiac cartilage cell cerebral cervical chest chronic
clinical colon congenital contrast cortex cranial cyst cytology deficiency dermatology
diagnosis diaphragm diastolic dilation disease distal dose edema effusion embolism endocrine
enlarged epithelial esophagus examination fatigue femur fibrosis fluid fracture gastric
genetic gland glucose hematoma hemorrhage hepatic hernia histology hormone hypoxia imaging
immune infection inflammation infiltrate injury insulin intestinal intravenous ischemia
joint kidney lateral lesion ligament lobe lumbar lymph malignant mass medial membrane
metabolic muscle nerve neurology nodule normal obstruction opacity oral organ pain
pathology pediatric pelvis pericardial peripheral pleural posterior pressure prognosis
proximal pulmonary radiology renal respiratory retina rib sclerosis screening secretion
severe sinus skin spine stenosis surgery symptom syndrome systolic tendon therapy thoracic
thrombosis thyroid tissue trachea trauma tumor ulcer urinary vascular vein ventricle vertebra
viral vitamin wound x-ray
"""


def tokenizer_corpus() -> list[str]:
    """Lines to train the tiny tokenizer on (deterministic, repeated so merges are stable)."""
    lines = [line.strip() for line in _SENTENCES.strip().splitlines() if line.strip()]
    words = _WORDS.split()
    lines += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [f"{n} {n / 10:.1f} {n}%" for n in range(0, 200, 7)]
    return lines * 3
