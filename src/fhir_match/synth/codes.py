"""The generator's catalog: every code it writes, each tagged with the criteria sets it belongs to.

Only code/system pairs found in mappings/ or in terminology.yaml (never a MEMORY one) appear
here; a concept's ``sets`` are the value-set ids of mappings/ that criteria.md reads (plus
``itp-text`` for a Condition with no code whose text names ITP), written by hand from
criteria.md so that tests can hold them against the mappings instead of trusting them.
Every variant of a concept belongs to the same sets, so the coding a patient gets never changes
the answer the generator intends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fhir_match.terminology import ATC, ICD10, ICD10CM, ICD10PCS
from fhir_match.units import UCUM

__all__ = [
    "ALLERGENS",
    "ATC",
    "CHEMO_PROCEDURE",
    "CONDITIONS",
    "CPT",
    "DRUGS",
    "ECOG_ANSWERS",
    "ECOG_CODE",
    "HCG_CODES",
    "ICD10",
    "ICD10CM",
    "ICD10PCS",
    "INCIDENTAL_SPLENECTOMY",
    "IV_ROUTES",
    "KN5501",
    "LOINC",
    "LVEF_CODES",
    "MARROW_CODE",
    "NYHA_ANSWERS",
    "NYHA_CODE",
    "ORAL_ROUTES",
    "OTHER_STUDIES",
    "PLATELET_CODES",
    "PLATELET_UNITS",
    "RXNORM",
    "SC_ROUTES",
    "SNOMED",
    "SPLENECTOMY",
    "UCUM",
    "Coding",
    "Concept",
    "Drug",
    "DrugStyle",
    "HcgCode",
    "Route",
    "Study",
    "UnitVariant",
    "Variant",
]

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"

# Criteria sets (value-set ids of mappings/valuesets) the expectations read.
ITP = "itp"
ITP_HISTORY = "itp-history"
ITP_TEXT = "itp-text"
EVANS = "evans-syndrome"
THROMBOCYTOPENIA_UNSPECIFIED = "thrombocytopenia-unspecified"
SPLENOMEGALY = "splenomegaly-hypersplenism"
ASPLENIA = "acquired-absence-of-spleen"
SECONDARY = "secondary-cause"
IMMUNODEFICIENCY = "immunodeficiency"
HEART_FAILURE = "heart-failure"
EPILEPSY = "epilepsy"
CNS_OTHER = "cns-disease-other"
HERPES_SEVERE = "herpes-severe"
HERPES = "herpes-infection"
MALIGNANCY = "malignancy"
BREAST_CERVIX = "malignancy-breast-cervix"
PREGNANCY = "pregnancy"
LACTATION = "lactation"
OTHER_THROMBOCYTOPENIA = "thrombocytopenia-other"
EFFUSION = "pericardial-effusion"
SPLENECTOMY_SET = "splenectomy"
INCIDENTAL_SET = "splenectomy-incidental"
CHEMOTHERAPY = "chemotherapy"
CORTICOSTEROID = "corticosteroid-systemic"
IVIG = "ivig"
THROMBOPOIETIC = "thrombopoietic-agent"
RITUXIMAB = "rituximab"
MONOCLONAL = "monoclonal-antibody"
IMMUNOSUPPRESSANT = "immunosuppressant-oral"
ANTIBACTERIAL = "antibacterial"
ALLERGEN = "trial-drug-allergen"


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str


@dataclass(frozen=True)
class Variant:
    """One way a record codes a concept: some codings, a text, or both."""

    codings: tuple[Coding, ...]
    text: str | None = None


@dataclass(frozen=True)
class Concept:
    """A clinical concept (condition, procedure, allergy substance) and the ways it is coded."""

    key: str
    sets: frozenset[str]
    variants: tuple[Variant, ...]


def _sct(code: str, display: str) -> Coding:
    return Coding(SNOMED, code, display)


def _cm(code: str, display: str) -> Coding:
    return Coding(ICD10CM, code, display)


def _who(code: str, display: str) -> Coding:
    return Coding(ICD10, code, display)


def _v(*codings: Coding, text: str | None = None) -> Variant:
    return Variant(codings, text)


def _text(*texts: str) -> tuple[Variant, ...]:
    return tuple(Variant((), text) for text in texts)


def _icd(code: str, display: str, cm_display: str | None = None) -> tuple[Variant, Variant]:
    """The same ICD-10 code as a US (ICD-10-CM) and as a WHO/Chinese (ICD-10) record codes it."""
    return _v(_cm(code, cm_display or display)), _v(_who(code, display))


def _concept(key: str, sets: frozenset[str], *variants: Variant) -> Concept:
    return Concept(key, sets, variants)


_S = frozenset[str]
_NONE: _S = frozenset()

_CONDITION_LIST = (
    # inc-2: ITP as real EHRs code it (US ICD-10-CM, WHO ICD-10 with the Chinese extension, SNOMED).
    _concept(
        "itp",
        frozenset({ITP}),
        _v(_cm("D69.3", "Immune thrombocytopenic purpura")),
        _v(_who("D69.3", "Idiopathic thrombocytopenic purpura")),
        _v(_who("D69.300x001", "原发免疫性血小板减少症")),
        _v(_sct("32273002", "Idiopathic thrombocytopenic purpura (disorder)")),
        _v(_sct("2897005", "Immune thrombocytopenia (disorder)")),
        _v(_sct("13172003", "Autoimmune thrombocytopenic purpura (disorder)")),
        _v(_sct("128091003", "Autoimmune thrombocytopenia (disorder)")),
        _v(
            _cm("D69.3", "Immune thrombocytopenic purpura"),
            _sct("32273002", "Idiopathic thrombocytopenic purpura (disorder)"),
            text="Immune thrombocytopenia",
        ),
        _v(_who("D69.300x001", "原发免疫性血小板减少症"), text="原发免疫性血小板减少症"),
    ),
    _concept(
        "itp-acute",
        frozenset({ITP}),
        _v(_sct("28505005", "Acute idiopathic thrombocytopenic purpura (disorder)")),
    ),
    # Names of terminology.yaml only (criteria.md: "the names in terminology.yaml").
    _concept(
        "itp-text",
        frozenset({ITP_TEXT}),
        *_text("原发免疫性血小板减少症", "免疫性血小板减少症", "特发性血小板减少性紫癜", "ITP"),
    ),
    _concept(
        "itp-history",
        frozenset({ITP_HISTORY}),
        _v(_sct("441511006", "History of immune thrombocytopenia (situation)")),
    ),
    _concept("evans", frozenset({EVANS}), _v(_cm("D69.41", "Evans syndrome"))),
    _concept(
        "thrombocytopenia-unspecified",
        frozenset({THROMBOCYTOPENIA_UNSPECIFIED}),
        *_icd("D69.6", "Thrombocytopenia, unspecified"),
    ),
    # inc-4
    _concept(
        "splenomegaly",
        frozenset({SPLENOMEGALY}),
        *_icd("R16.1", "Splenomegaly, not elsewhere classified"),
        _v(_sct("16294009", "Splenomegaly (disorder)")),
    ),
    _concept(
        "hepatosplenomegaly",
        frozenset({SPLENOMEGALY}),
        *_icd("R16.2", "Hepatomegaly with splenomegaly, not elsewhere classified"),
    ),
    _concept(
        "congestive-splenomegaly",
        frozenset({SPLENOMEGALY}),
        *_icd("D73.2", "Chronic congestive splenomegaly"),
    ),
    _concept(
        "hypersplenism", frozenset({SPLENOMEGALY, SECONDARY}), *_icd("D73.1", "Hypersplenism")
    ),
    _concept("asplenia", frozenset({ASPLENIA}), _v(_cm("Z90.81", "Acquired absence of spleen"))),
    # inc-6 secondary causes
    _concept(
        "sle",
        frozenset({SECONDARY}),
        _v(_sct("55464009", "Systemic lupus erythematosus (disorder)")),
        _v(_who("M32.9", "Systemic lupus erythematosus, unspecified")),
    ),
    _concept(
        "rheumatoid-arthritis",
        frozenset({SECONDARY}),
        _v(_sct("69896004", "Rheumatoid arthritis (disorder)")),
        *_icd("M06.9", "Rheumatoid arthritis, unspecified"),
    ),
    _concept("sjogren", frozenset({SECONDARY}), _v(_who("M35.0", "Sicca syndrome [Sjögren]"))),
    _concept(
        "antiphospholipid", frozenset({SECONDARY}), _v(_cm("D68.61", "Antiphospholipid syndrome"))
    ),
    _concept(
        "autoimmune-haemolytic-anaemia",
        frozenset({SECONDARY}),
        _v(_who("D59.1", "Other autoimmune haemolytic anaemias")),
    ),
    _concept(
        "hypothyroidism", frozenset({SECONDARY}), *_icd("E03.9", "Hypothyroidism, unspecified")
    ),
    _concept(
        "autoimmune-thyroiditis",
        frozenset({SECONDARY}),
        *_icd("E06.3", "Autoimmune thyroiditis"),
        _v(_sct("27538003", "Hyperthyroidism with Hashimoto disease (disorder)")),
    ),
    _concept(
        "thyrotoxicosis", frozenset({SECONDARY}), _v(_sct("90739004", "Thyrotoxicosis (disorder)"))
    ),
    _concept(
        "thyroid-disorder",
        frozenset({SECONDARY}),
        *_icd("E07.9", "Disorder of thyroid, unspecified"),
    ),
    _concept(
        "non-hodgkin-lymphoma",
        frozenset({SECONDARY, MALIGNANCY}),
        _v(_sct("118601006", "Non-Hodgkin's lymphoma (disorder)")),
        _v(_sct("118600007", "Malignant lymphoma (disorder)")),
    ),
    _concept(
        "hodgkin-lymphoma",
        frozenset({SECONDARY, MALIGNANCY}),
        _v(_sct("118599009", "Hodgkin's disease (disorder)")),
    ),
    _concept(
        "chronic-lymphocytic-leukaemia",
        frozenset({SECONDARY, MALIGNANCY}),
        _v(_sct("92814006", "Chronic lymphoid leukemia, disease (disorder)")),
        _v(_sct("93143009", "Leukemia, disease (disorder)")),
    ),
    _concept(
        "multiple-myeloma",
        frozenset({SECONDARY, MALIGNANCY}),
        _v(_sct("109989006", "Multiple myeloma (disorder)")),
    ),
    _concept(
        "monoclonal-gammopathy", frozenset({SECONDARY}), _v(_cm("D47.2", "Monoclonal gammopathy"))
    ),
    _concept(
        "myelodysplastic-syndrome",
        frozenset({SECONDARY}),
        _v(_sct("109995007", "Myelodysplastic syndrome (disorder)")),
        _v(_cm("D46.9", "Myelodysplastic syndrome, unspecified")),
    ),
    _concept(
        "aplastic-anaemia",
        frozenset({SECONDARY}),
        *_icd("D61.9", "Aplastic anaemia, unspecified", "Aplastic anemia, unspecified"),
    ),
    _concept(
        "cirrhosis",
        frozenset({SECONDARY}),
        _v(_sct("19943007", "Cirrhosis of liver (disorder)")),
        _v(_cm("K74.60", "Unspecified cirrhosis of liver")),
    ),
    _concept(
        "chronic-liver-disease",
        frozenset({SECONDARY}),
        _v(_sct("328383001", "Chronic liver disease (disorder)")),
        *_icd("K73.9", "Chronic hepatitis, unspecified"),
    ),
    _concept("portal-hypertension", frozenset({SECONDARY}), *_icd("K76.6", "Portal hypertension")),
    _concept(
        "chronic-hepatitis-b",
        frozenset({SECONDARY}),
        _v(_sct("61977001", "Chronic type B viral hepatitis (disorder)")),
        *_icd("B18.1", "Chronic viral hepatitis B without delta-agent"),
    ),
    _concept(
        "chronic-hepatitis-c",
        frozenset({SECONDARY}),
        _v(_sct("128302006", "Chronic hepatitis C (disorder)")),
        *_icd("B18.2", "Chronic viral hepatitis C"),
    ),
    _concept(
        "helicobacter-pylori",
        frozenset({SECONDARY}),
        _v(
            _cm(
                "B96.81",
                "Helicobacter pylori [H. pylori] as the cause of diseases classified elsewhere",
            )
        ),
    ),
    _concept(
        "pregnancy-thrombocytopenia",
        frozenset({SECONDARY, PREGNANCY}),
        _v(
            _cm(
                "O99.11",
                "Other diseases of the blood and blood-forming organs and certain disorders "
                "involving the immune mechanism complicating pregnancy",
            )
        ),
    ),
    # exc-3 (also inc-6)
    _concept(
        "common-variable-immunodeficiency",
        frozenset({IMMUNODEFICIENCY, SECONDARY}),
        _v(_sct("23238000", "Common variable agammaglobulinemia (disorder)")),
        _v(
            _sct(
                "191011000",
                "Common variable immunodeficiency with predominant abnormalities of B-cell "
                "numbers and functions (disorder)",
            )
        ),
        _v(_cm("D83.9", "Common variable immunodeficiency, unspecified")),
    ),
    _concept(
        "immunodeficiency",
        frozenset({IMMUNODEFICIENCY, SECONDARY}),
        _v(_sct("234532001", "Immunodeficiency disorder (disorder)")),
        _v(_cm("D84.9", "Immunodeficiency, unspecified")),
        _v(_cm("D84.821", "Immunodeficiency due to drugs")),
    ),
    _concept(
        "hiv",
        frozenset({IMMUNODEFICIENCY, SECONDARY}),
        _v(_sct("86406008", "Human immunodeficiency virus infection (disorder)")),
        *_icd(
            "B20",
            "HIV disease resulting in infectious and parasitic diseases",
            "Human immunodeficiency virus [HIV] disease",
        ),
        _v(_cm("Z21", "Asymptomatic human immunodeficiency virus [HIV] infection status")),
    ),
    # exc-10 (also inc-6)
    _concept(
        "heparin-induced-thrombocytopenia",
        frozenset({OTHER_THROMBOCYTOPENIA, SECONDARY}),
        _v(_sct("73397007", "Heparin induced thrombocytopenia")),
        _v(_cm("D75.829", "Heparin-induced thrombocytopenia, unspecified")),
    ),
    _concept(
        "thrombotic-thrombocytopenic-purpura",
        frozenset({OTHER_THROMBOCYTOPENIA, SECONDARY}),
        _v(_sct("78129009", "Thrombotic thrombocytopenic purpura")),
        _v(_cm("M31.19", "Other thrombotic microangiopathy")),
    ),
    _concept(
        "disseminated-intravascular-coagulation",
        frozenset({OTHER_THROMBOCYTOPENIA, SECONDARY}),
        _v(_sct("67406007", "Disseminated intravascular coagulation (disorder)")),
        *_icd("D65", "Disseminated intravascular coagulation [defibrination syndrome]"),
    ),
    _concept(
        "drug-induced-thrombocytopenia",
        frozenset({OTHER_THROMBOCYTOPENIA, SECONDARY}),
        _v(_sct("19307009", "Drug-induced immune thrombocytopenia")),
        _v(_cm("D69.59", "Other secondary thrombocytopenia")),
    ),
    _concept(
        "inherited-thrombocytopenia",
        frozenset({OTHER_THROMBOCYTOPENIA, SECONDARY}),
        _v(_cm("D69.42", "Congenital and hereditary thrombocytopenia purpura")),
        _v(_sct("36070007", "Wiskott-Aldrich syndrome (disorder)")),
    ),
    _concept(
        "posttransfusion-purpura",
        frozenset({OTHER_THROMBOCYTOPENIA, SECONDARY}),
        _v(_cm("D69.51", "Posttransfusion purpura")),
    ),
    # exc-4, exc-5
    _concept(
        "heart-failure",
        frozenset({HEART_FAILURE}),
        _v(_sct("84114007", "Heart failure (disorder)")),
        _v(_who("I50", "Heart failure")),
    ),
    _concept(
        "epilepsy",
        frozenset({EPILEPSY}),
        _v(_sct("84757009", "Epilepsy (disorder)")),
        _v(_sct("128613002", "Seizure disorder (disorder)")),
        _v(_who("G40", "Epilepsy")),
    ),
    _concept("cerebral-infarction", frozenset({CNS_OTHER}), *_icd("I63", "Cerebral infarction")),
    _concept(
        "intracerebral-haemorrhage",
        frozenset({CNS_OTHER}),
        *_icd("I61", "Intracerebral haemorrhage", "Nontraumatic intracerebral hemorrhage"),
    ),
    _concept("parkinson", frozenset({CNS_OTHER}), _v(_who("G20", "Parkinson disease"))),
    _concept(
        "cns-disorder",
        frozenset({CNS_OTHER}),
        _v(_sct("23853001", "Disorder of the central nervous system (disorder)")),
    ),
    # exc-6, exc-8
    _concept(
        "herpes-zoster",
        frozenset({HERPES}),
        _v(_sct("4740000", "Herpes zoster (disorder)")),
        _v(_sct("111859007", "Herpes zoster without complication (disorder)")),
        *_icd("B02", "Zoster [herpes zoster]"),
    ),
    _concept(
        "varicella",
        frozenset({HERPES}),
        _v(_sct("38907003", "Varicella (disorder)")),
        _v(_sct("309465005", "Varicella-zoster virus infection (disorder)")),
    ),
    _concept(
        "herpes-simplex",
        frozenset({HERPES}),
        *_icd("B00", "Herpesviral [herpes simplex] infections"),
    ),
    _concept(
        "herpes-severe",
        frozenset({HERPES_SEVERE, HERPES}),
        *_icd("B00.4", "Herpesviral encephalitis"),
        *_icd("B02.7", "Disseminated zoster"),
        _v(_cm("B02.0", "Zoster encephalitis")),
        _v(_who("B00.7", "Disseminated herpesviral disease")),
        _v(_sct("230176008", "Herpes zoster encephalitis (disorder)")),
        _v(_sct("55560002", "Disseminated herpes zoster (disorder)")),
        _v(_sct("87513003", "Herpes zoster ophthalmicus (disorder)")),
        _v(_sct("397570008", "Herpes simplex stromal keratitis (disorder)")),
    ),
    # exc-7
    _concept(
        "malignancy",
        frozenset({MALIGNANCY}),
        _v(_sct("363346000", "Malignant neoplastic disease (disorder)")),
        *_icd("C34", "Malignant neoplasm of bronchus and lung"),
        *_icd("C18", "Malignant neoplasm of colon"),
        *_icd("C16", "Malignant neoplasm of stomach"),
        *_icd("C22", "Malignant neoplasm of liver and intrahepatic bile ducts"),
        *_icd("C73", "Malignant neoplasm of thyroid gland"),
        *_icd("C61", "Malignant neoplasm of prostate"),
    ),
    _concept(
        "breast-or-cervix-cancer",
        frozenset({MALIGNANCY, BREAST_CERVIX}),
        *_icd("C50", "Malignant neoplasm of breast"),
        *_icd("C53", "Malignant neoplasm of cervix uteri"),
    ),
    _concept(
        "skin-cancer-non-melanoma",
        _NONE,
        _v(_who("C44", "Other malignant neoplasms of skin")),
        _v(_cm("C44", "Other and unspecified malignant neoplasm of skin")),
    ),
    _concept("carcinoma-in-situ-bladder", _NONE, *_icd("D09.0", "Carcinoma in situ of bladder")),
    # exc-9
    _concept(
        "pregnancy",
        frozenset({PREGNANCY}),
        _v(_sct("77386006", "Pregnancy (finding)")),
        _v(_cm("Z33.1", "Pregnant state, incidental")),
        _v(_who("O26", "Maternal care for other conditions predominantly related to pregnancy")),
        _v(_who("O24", "Diabetes mellitus in pregnancy")),
    ),
    _concept(
        "lactation",
        frozenset({LACTATION}),
        _v(_sct("866041003", "Mother currently breastfeeding (situation)")),
        _v(_sct("1260078007", "Maternal breastfeeding (finding)")),
        _v(_sct("169750002", "Mother currently breast-feeding (finding)")),
        _v(_cm("Z39.1", "Encounter for care and examination of lactating mother")),
    ),
    # inc-10
    _concept(
        "pericardial-effusion",
        frozenset({EFFUSION}),
        _v(_cm("I31.39", "Other pericardial effusion (noninflammatory)")),
        _v(_who("I31.3", "Pericardial effusion (noninflammatory)")),
    ),
    # Ordinary conditions no criterion reads: no verified codes here, so text only.
    _concept("hypertension", _NONE, *_text("Essential hypertension", "高血压", "原发性高血压")),
    _concept("type-2-diabetes", _NONE, *_text("Type 2 diabetes mellitus", "2型糖尿病")),
    _concept("hyperlipidaemia", _NONE, *_text("Hyperlipidemia", "高脂血症")),
    _concept("copd", _NONE, *_text("Chronic obstructive pulmonary disease", "慢性阻塞性肺疾病")),
    _concept("asthma", _NONE, *_text("Asthma", "支气管哮喘")),
    _concept("gerd", _NONE, *_text("Gastro-oesophageal reflux disease", "胃食管反流病")),
    _concept("osteoarthritis", _NONE, *_text("Osteoarthritis of knee", "膝骨关节炎")),
    _concept("osteoporosis", _NONE, *_text("Osteoporosis", "骨质疏松症")),
    _concept("ckd", _NONE, *_text("Chronic kidney disease stage 3", "慢性肾脏病3期")),
    _concept("depression", _NONE, *_text("Depressive disorder", "抑郁症")),
    _concept("gout", _NONE, *_text("Gout", "痛风")),
    _concept("fatty-liver", _NONE, *_text("Fatty liver", "脂肪肝")),
    _concept("pneumonia", _NONE, *_text("Community-acquired pneumonia", "社区获得性肺炎")),
    _concept("urinary-infection", _NONE, *_text("Urinary tract infection", "尿路感染")),
    _concept("cellulitis", _NONE, *_text("Cellulitis of leg", "下肢蜂窝织炎")),
    _concept("menorrhagia", _NONE, *_text("Menorrhagia", "月经过多")),
    _concept("epistaxis", _NONE, *_text("Epistaxis", "鼻出血")),
)

CONDITIONS: Mapping[str, Concept] = MappingProxyType({c.key: c for c in _CONDITION_LIST})

SPLENECTOMY = _concept(
    "splenectomy",
    frozenset({SPLENECTOMY_SET}),
    _v(_sct("234319005", "Splenectomy (procedure)")),
    _v(_sct("174776001", "Total splenectomy (procedure)")),
    _v(_sct("314118002", "Laparoscopic total splenectomy (procedure)")),
    _v(Coding(CPT, "38100", "Splenectomy; total (separate procedure)")),
    _v(Coding(CPT, "38120", "Laparoscopy, surgical, splenectomy")),
    _v(Coding(ICD10PCS, "07TP0ZZ", "Resection of Spleen, Open Approach")),
    _v(Coding(ICD10PCS, "07TP4ZZ", "Resection of Spleen, Percutaneous Endoscopic Approach")),
    # criteria.md: a procedure named 脾切除 is a splenectomy even with no code.
    *_text("腹腔镜脾切除术", "脾切除术"),
)
"""Splenectomies that count (inc-4, inc-7)."""

INCIDENTAL_SPLENECTOMY = _concept(
    "incidental-splenectomy",
    frozenset({INCIDENTAL_SET}),
    _v(
        _sct("60194009", "Distal subtotal pancreatectomy with splenectomy (procedure)"),
        text="胰体尾切除术+脾切除术",
    ),
    _v(
        Coding(
            CPT,
            "38115",
            "Repair of ruptured spleen (splenorrhaphy) with or without partial splenectomy",
        )
    ),
)
"""Spleen surgery that is not an ITP splenectomy, even when its text says 脾切除."""

CHEMO_PROCEDURE = _concept(
    "chemotherapy",
    frozenset({CHEMOTHERAPY}),
    _v(_sct("367336001", "Chemotherapy (procedure)")),
    _v(
        Coding(
            CPT,
            "96413",
            "Chemotherapy administration, intravenous infusion technique; up to 1 hour, single "
            "or initial substance/drug",
        )
    ),
)

ALLERGENS: Mapping[str, Concept] = MappingProxyType(
    {
        c.key: c
        for c in (
            _concept(
                "cyclophosphamide",
                frozenset({ALLERGEN}),
                _v(Coding(RXNORM, "3002", "cyclophosphamide")),
                _v(Coding(ATC, "L01AA01", "cyclophosphamide")),
                *_text("环磷酰胺", "Cyclophosphamide"),
            ),
            _concept(
                "fludarabine",
                frozenset({ALLERGEN}),
                _v(Coding(RXNORM, "24698", "fludarabine")),
                _v(Coding(ATC, "L01BB05", "fludarabine")),
                *_text("氟达拉滨", "Fludarabine"),
            ),
            _concept(
                "tocilizumab",
                frozenset({ALLERGEN}),
                _v(Coding(RXNORM, "612865", "tocilizumab")),
                _v(Coding(ATC, "L04AC07", "tocilizumab")),
                *_text("托珠单抗", "Tocilizumab"),
            ),
            _concept("penicillin", _NONE, *_text("Penicillin", "青霉素类")),
            _concept("sulfonamide", _NONE, *_text("Sulfonamides", "磺胺类药物")),
            _concept("contrast", _NONE, *_text("Iodinated contrast media", "碘造影剂")),
            _concept("seafood", _NONE, *_text("Shellfish", "海鲜")),
        )
    }
)


# --- medications ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DrugStyle:
    """One way a record names a drug.

    ``inline``: the codings and text sit in ``medicationCodeableConcept``; ``code`` and
    ``ingredient``: they sit in a shared Medication resource (as its code, or as its
    ingredient's item with ``text`` as the product name).
    """

    key: str
    place: str
    codings: tuple[Coding, ...]
    text: str | None


@dataclass(frozen=True)
class Drug:
    key: str
    classes: frozenset[str]
    styles: tuple[DrugStyle, ...]

    def medication_id(self, style: DrugStyle) -> str:
        return f"med-{self.key}-{style.key}"


def _rx(code: str, display: str) -> Coding:
    return Coding(RXNORM, code, display)


def _atc(code: str, display: str) -> Coding:
    return Coding(ATC, code, display)


def _drug(
    key: str,
    classes: frozenset[str],
    codes: tuple[Coding, ...],
    texts: tuple[str, ...],
    product: str | None = None,
) -> Drug:
    """A drug with an inline style per code and per text, and shared Medication styles:
    one per code, one with the first code as ingredient of ``product``, and (for drugs with no
    code) one named ``product`` only."""
    styles: list[DrugStyle] = []
    for coding in codes:
        kind = "rxnorm" if coding.system == RXNORM else "atc"
        styles.append(DrugStyle(f"{kind}-{coding.code.lower()}", "inline", (coding,), None))
        styles.append(DrugStyle(f"med-{coding.code.lower()}", "code", (coding,), None))
    if codes and product:
        styles.append(DrugStyle("med-ingredient", "ingredient", (codes[0],), product))
    if not codes and product:
        styles.append(DrugStyle("med-name", "code", (), product))
    styles.extend(DrugStyle(f"text-{n}", "inline", (), text) for n, text in enumerate(texts))
    return Drug(key, classes, tuple(styles))


_F = frozenset
_DRUG_LIST = (
    _drug(
        "prednisone",
        _F({CORTICOSTEROID}),
        (_rx("8640", "prednisone"), _atc("H02AB07", "prednisone")),
        ("Prednisone 5 mg tablet", "醋酸泼尼松片", "强的松"),
        "Deltasone 20 mg tablet",
    ),
    _drug(
        "prednisolone",
        _F({CORTICOSTEROID}),
        (_rx("8638", "prednisolone"), _atc("H02AB06", "prednisolone")),
        ("泼尼松龙片",),
    ),
    _drug(
        "methylprednisolone",
        _F({CORTICOSTEROID}),
        (_rx("6902", "methylprednisolone"), _atc("H02AB04", "methylprednisolone")),
        ("Methylprednisolone 40 mg injection", "注射用甲泼尼龙琥珀酸钠", "甲强龙"),
        "Solu-Medrol 500 mg injection",
    ),
    _drug(
        "dexamethasone",
        _F({CORTICOSTEROID}),
        (_rx("3264", "dexamethasone"), _atc("H02AB02", "dexamethasone")),
        ("Dexamethasone 40 mg", "地塞米松磷酸钠注射液", "醋酸地塞米松片"),
        "Decadron 4 mg tablet",
    ),
    _drug(
        "hydrocortisone",
        _F({CORTICOSTEROID}),
        (_rx("5492", "hydrocortisone"), _atc("H02AB09", "hydrocortisone")),
        ("注射用氢化可的松琥珀酸钠",),
    ),
    _drug(
        "ivig",
        _F({IVIG}),
        (_atc("J06BA02", "immunoglobulins, normal human, for intravascular adm."),),
        ("IVIG 0.4 g/kg", "静注人免疫球蛋白(pH4)", "丙种球蛋白", "Intravenous immunoglobulin"),
        "静注人免疫球蛋白(pH4) 2.5g",
    ),
    _drug(
        "eltrombopag",
        _F({THROMBOPOIETIC}),
        (_atc("B02BX05", "eltrombopag"),),
        ("Eltrombopag 50 mg tablet", "Promacta 25 mg", "艾曲泊帕乙醇胺片", "瑞弗兰"),
        "Revolade 25 mg film-coated tablet",
    ),
    _drug(
        "romiplostim",
        _F({THROMBOPOIETIC}),
        (_atc("B02BX04", "romiplostim"),),
        ("Romiplostim 1 mcg/kg", "Nplate 250 mcg", "注射用罗米司亭"),
    ),
    _drug(
        "avatrombopag",
        _F({THROMBOPOIETIC}),
        (_atc("B02BX08", "avatrombopag"),),
        ("Avatrombopag 20 mg", "Doptelet 20 mg tablet", "马来酸阿伐曲泊帕片", "苏可欣"),
    ),
    _drug(
        "hetrombopag",
        _F({THROMBOPOIETIC}),
        (),
        ("海曲泊帕乙醇胺片 2.5mg", "Hetrombopag olamine 7.5 mg", "恒曲"),
        "海曲泊帕乙醇胺片",
    ),
    _drug(
        "rhtpo",
        _F({THROMBOPOIETIC}),
        (),
        ("重组人血小板生成素注射液", "特比澳 15000U", "rhTPO 300 U/kg"),
        "重组人血小板生成素注射液(特比澳)",
    ),
    _drug(
        "rituximab",
        _F({RITUXIMAB, MONOCLONAL}),
        (
            _rx("121191", "rituximab"),
            _atc("L01FA01", "rituximab"),
            _atc("L01XC02", "rituximab"),
        ),
        ("Rituximab 375 mg/m2", "MabThera 100 mg", "利妥昔单抗注射液", "美罗华"),
        "Truxima 500 mg/50 mL",
    ),
    _drug(
        "cyclosporine",
        _F({IMMUNOSUPPRESSANT}),
        (_rx("3008", "cyclosporine"), _atc("L04AD01", "ciclosporin")),
        ("Cyclosporine (Neoral) 100 mg", "环孢素软胶囊"),
    ),
    _drug(
        "azathioprine",
        _F({IMMUNOSUPPRESSANT}),
        (_rx("1256", "azathioprine"), _atc("L04AX01", "azathioprine")),
        ("硫唑嘌呤片",),
    ),
    _drug(
        "mycophenolate",
        _F({IMMUNOSUPPRESSANT}),
        (_rx("68149", "mycophenolate mofetil"), _atc("L04AA06", "mycophenolic acid")),
        ("吗替麦考酚酯胶囊", "CellCept 500 mg"),
    ),
    _drug(
        "sirolimus",
        _F({IMMUNOSUPPRESSANT}),
        (_rx("35302", "sirolimus"), _atc("L04AH01", "sirolimus")),
        ("西罗莫司片",),
    ),
    _drug("danazol", _F(), (_atc("G03XA01", "danazol"),), ("达那唑胶囊", "Danazol 200 mg")),
    _drug(
        "vincristine",
        _F({CHEMOTHERAPY}),
        (_atc("L01CA02", "vincristine"),),
        ("注射用硫酸长春新碱", "Vincristine 1.4 mg/m2"),
    ),
    _drug("decitabine", _F({CHEMOTHERAPY}), (), ("注射用地西他滨", "Decitabine 3.5 mg/m2")),
    _drug(
        "cyclophosphamide",
        _F({CHEMOTHERAPY, ALLERGEN}),
        (_rx("3002", "cyclophosphamide"), _atc("L01AA01", "cyclophosphamide")),
        ("注射用环磷酰胺", "Cyclophosphamide 750 mg/m2"),
    ),
    _drug(
        "fludarabine",
        _F({CHEMOTHERAPY, ALLERGEN}),
        (_rx("24698", "fludarabine"), _atc("L01BB05", "fludarabine")),
        ("注射用磷酸氟达拉滨",),
    ),
    _drug(
        "tocilizumab",
        _F({MONOCLONAL, ALLERGEN}),
        (_rx("612865", "tocilizumab"), _atc("L04AC07", "tocilizumab")),
        ("托珠单抗注射液", "Actemra 162 mg"),
    ),
    _drug("adalimumab", _F({MONOCLONAL}), (), ("Adalimumab 40 mg", "阿达木单抗注射液")),
    _drug("denosumab", _F({MONOCLONAL}), (), ("Denosumab 60 mg", "地舒单抗注射液")),
    _drug(
        "hydroxychloroquine",
        _F(),
        (_rx("5521", "hydroxychloroquine"), _atc("P01BA02", "hydroxychloroquine")),
        ("硫酸羟氯喹片",),
    ),
    # Antibacterials: by name, as Chinese HIS and many US feeds send them.
    _drug(
        "ceftriaxone", _F({ANTIBACTERIAL}), (), ("Ceftriaxone 2 g", "注射用头孢曲松钠", "罗氏芬")
    ),
    _drug(
        "piperacillin-tazobactam",
        _F({ANTIBACTERIAL}),
        (),
        ("Piperacillin-tazobactam 4.5 g", "注射用哌拉西林钠他唑巴坦钠"),
    ),
    _drug(
        "levofloxacin",
        _F({ANTIBACTERIAL}),
        (),
        ("Levofloxacin 500 mg", "左氧氟沙星氯化钠注射液", "左氧氟沙星片"),
    ),
    _drug("cefuroxime", _F({ANTIBACTERIAL}), (), ("Cefuroxime 1.5 g", "头孢呋辛酯片")),
    _drug("meropenem", _F({ANTIBACTERIAL}), (), ("Meropenem 1 g", "注射用美罗培南")),
    _drug("amoxicillin", _F({ANTIBACTERIAL}), (), ("Amoxicillin 500 mg capsule", "阿莫西林胶囊")),
    _drug("azithromycin", _F({ANTIBACTERIAL}), (), ("Azithromycin 250 mg", "阿奇霉素片")),
    _drug("vancomycin", _F({ANTIBACTERIAL}), (), ("Vancomycin 1 g", "注射用盐酸万古霉素")),
    _drug("cefazolin", _F({ANTIBACTERIAL}), (), ("Cefazolin 1 g", "注射用头孢唑林钠")),
    # Ordinary drugs no criterion reads.
    _drug("amlodipine", _F(), (), ("Amlodipine 5 mg tablet", "苯磺酸氨氯地平片")),
    _drug("metformin", _F(), (), ("Metformin 500 mg tablet", "盐酸二甲双胍片")),
    _drug("atorvastatin", _F(), (), ("Atorvastatin 20 mg tablet", "阿托伐他汀钙片")),
    _drug("levothyroxine", _F(), (), ("Levothyroxine 50 mcg tablet", "左甲状腺素钠片")),
    _drug("omeprazole", _F(), (), ("Omeprazole 20 mg capsule", "奥美拉唑肠溶胶囊")),
    _drug("insulin-glargine", _F(), (), ("Insulin glargine 100 units/mL", "甘精胰岛素注射液")),
    _drug("salbutamol", _F(), (), ("Salbutamol inhaler 100 mcg", "硫酸沙丁胺醇吸入气雾剂")),
    _drug("aciclovir", _F(), (), ("Aciclovir 400 mg tablet", "阿昔洛韦片")),
    _drug("valaciclovir", _F(), (), ("Valaciclovir 500 mg tablet", "盐酸伐昔洛韦片")),
    _drug("entecavir", _F(), (), ("Entecavir 0.5 mg tablet", "恩替卡韦分散片")),
    _drug("calcium", _F(), (), ("Calcium carbonate with vitamin D3", "碳酸钙D3片")),
    _drug("tranexamic-acid", _F(), (), ("Tranexamic acid 1 g", "氨甲环酸注射液")),
    _drug("aspirin", _F(), (), ("Aspirin 100 mg tablet", "阿司匹林肠溶片")),
    _drug("heparin", _F(), (), ("Heparin sodium 5000 units", "肝素钠注射液")),
)

DRUGS: Mapping[str, Drug] = MappingProxyType({d.key: d for d in _DRUG_LIST})


@dataclass(frozen=True)
class Route:
    """A dosage route: ``kind`` is what it means (iv, oral, sc); coded or text only."""

    kind: str
    coding: Coding | None
    text: str


IV_ROUTES = (
    Route("iv", _sct("47625008", "Intravenous route (qualifier value)"), "Intravenous"),
    Route("iv", _sct("418114005", "Intravenous central route (qualifier value)"), "IV central"),
    Route("iv", _sct("419993007", "Intravenous peripheral route (qualifier value)"), "IV"),
    Route("iv", None, "IV"),
    Route("iv", None, "静脉滴注"),
    Route("iv", None, "intravenous"),
)
ORAL_ROUTES = (Route("oral", None, "口服"), Route("oral", None, "PO"), Route("oral", None, "oral"))
SC_ROUTES = (Route("sc", None, "皮下注射"), Route("sc", None, "subcutaneous"))

# --- observations --------------------------------------------------------------------------

PLATELET_CODES = (
    Coding(LOINC, "777-3", "Platelets [#/volume] in Blood by Automated count"),
    Coding(LOINC, "26515-7", "Platelets [#/volume] in Blood"),
    Coding(LOINC, "778-1", "Platelets [#/volume] in Blood by Manual count"),
    Coding(LOINC, "97995-5", "Platelets [#/volume] in Blood by Automated count.optical"),
    Coding(LOINC, "13056-7", "Platelets [#/volume] in Plasma by Automated count"),
    Coding(LOINC, "26516-5", "Platelets [#/volume] in Plasma"),
    Coding(LOINC, "49497-1", "Platelets [#/volume] in Blood by Estimate"),
)


@dataclass(frozen=True)
class UnitVariant:
    """How a lab writes a platelet count: the unit text, its UCUM code when the lab sends one,
    and the number to multiply the count in 10*9/L by. ``unit`` None: no unit at all, which
    criteria.md does not convert."""

    unit: str | None
    ucum: str | None
    scale: int


PLATELET_UNITS = (
    UnitVariant("10*9/L", "10*9/L", 1),
    UnitVariant("10^9/L", "10^9/L", 1),
    UnitVariant("x10^9/L", None, 1),
    UnitVariant("×10⁹/L", None, 1),
    UnitVariant("10*9/l", "10*9/l", 1),
    UnitVariant("Gpt/L", None, 1),
    UnitVariant("10*3/uL", "10*3/uL", 1),
    UnitVariant("K/uL", None, 1),
    UnitVariant("x10E3/uL", None, 1),
    UnitVariant("10*3/mm3", "10*3/mm3", 1),
    UnitVariant("thou/uL", None, 1),
    UnitVariant("/uL", "/uL", 1000),
    UnitVariant("/mm3", "/mm3", 1000),
    UnitVariant(None, None, 1000),
)
"""Index 0-5: SI spellings (Chinese labs); 6-10: US spellings; 11-12: per microlitre;
the last: no unit (not usable)."""

ECOG_CODE = Coding(LOINC, "89247-1", "ECOG Performance Status score")
ECOG_ANSWERS: Mapping[int, tuple[Coding, ...]] = MappingProxyType(
    {
        0: (
            Coding(
                LOINC,
                "LA9622-7",
                "Fully active, able to carry on all pre-disease performance without restriction",
            ),
            _sct("425389002", "ECOG grade 0"),
        ),
        1: (
            Coding(
                LOINC,
                "LA9623-5",
                "Restricted in physically strenuous activity but "
                "ambulatory and able to carry out work of a light or sedentary nature, e.g., "
                "light house work, office work",
            ),
            _sct("422512005", "ECOG grade 1"),
        ),
        2: (
            Coding(
                LOINC,
                "LA9624-3",
                "Ambulatory and capable of all selfcare but unable to carry "
                "out any work activities. Up and about more than 50% of waking hours",
            ),
            _sct("422894000", "ECOG grade 2"),
        ),
        3: (_sct("423053003", "ECOG grade 3"),),
    }
)
"""Coded ECOG answers by grade; grade 3 has no LOINC answer in mappings/ (criteria.md: an
ECOG of 3 is read as an integer or SNOMED 423053003)."""

LVEF_CODES = (
    Coding(LOINC, "10230-1", "Left ventricular Ejection fraction"),
    Coding(LOINC, "18043-0", "Left ventricular Ejection fraction by US"),
    Coding(LOINC, "8806-2", "Left ventricular Ejection fraction by 2D echo"),
    Coding(
        LOINC,
        "77892-8",
        "Left ventricular Ejection fraction by US.2D+Calculated by modified Simpson method",
    ),
    Coding(LOINC, "8807-0", "Left ventricular Ejection fraction by 2D echo.visual estimate"),
)

NYHA_CODE = Coding(LOINC, "88020-3", "NYHA functional capacity")
NYHA_ANSWERS: Mapping[int, Coding] = MappingProxyType(
    {
        1: _sct("420300004", "New York Heart Association Classification - Class I (finding)"),
        2: _sct("421704003", "New York Heart Association Classification - Class II (finding)"),
        3: _sct("420913000", "New York Heart Association Classification - Class III (finding)"),
        4: _sct("422293003", "New York Heart Association Classification - Class IV (finding)"),
    }
)


@dataclass(frozen=True)
class HcgCode:
    coding: Coding
    quantitative: bool


HCG_CODES = (
    HcgCode(
        Coding(LOINC, "2106-3", "Choriogonadotropin (pregnancy test) [Presence] in Urine"),
        quantitative=False,
    ),
    HcgCode(
        Coding(
            LOINC, "2118-8", "Choriogonadotropin (pregnancy test) [Presence] in Serum or Plasma"
        ),
        quantitative=False,
    ),
    HcgCode(
        Coding(
            LOINC,
            "80384-1",
            "Choriogonadotropin (pregnancy test) [Presence] in Urine by Rapid immunoassay",
        ),
        quantitative=False,
    ),
    HcgCode(
        Coding(LOINC, "19080-1", "Choriogonadotropin [Units/volume] in Serum or Plasma"),
        quantitative=True,
    ),
    HcgCode(
        Coding(
            LOINC, "21198-7", "Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma"
        ),
        quantitative=True,
    ),
    HcgCode(
        Coding(
            LOINC, "83086-9", "Choriogonadotropin [Units/volume] in Serum or Plasma by Immunoassay"
        ),
        quantitative=True,
    ),
)

MARROW_CODE = Coding(
    LOINC, "74467-3", "Megakaryocytes [Presence] in Bone marrow by Light microscopy"
)

# --- studies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """A ResearchStudy the population's ResearchSubjects point to (shared, like Medication)."""

    id: str
    identifier_system: str
    identifier: str
    title: str


KN5501 = Study(
    "kn5501",
    "https://clinicaltrials.gov",
    "NCT06337474",
    "CD19 CAR-NK cells (KN5501) for refractory primary immune thrombocytopenia",
)
_SYNTHETIC_STUDY = "https://fhir-match.org/synthetic/study"
OTHER_STUDIES = (
    Study(
        "syn-study-a",
        _SYNTHETIC_STUDY,
        "SYN-A",
        "Fictional study A: an oral BTK inhibitor in persistent ITP (synthetic, not a real trial)",
    ),
    Study(
        "syn-study-b",
        _SYNTHETIC_STUDY,
        "SYN-B",
        "Fictional study B: an anti-FcRn antibody in chronic ITP (synthetic, not a real trial)",
    ),
    Study(
        "syn-study-c",
        _SYNTHETIC_STUDY,
        "SYN-C",
        "Fictional study C: a lipid-lowering drug "
        "after myocardial infarction (synthetic, not a real trial)",
    ),
)
