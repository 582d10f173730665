"""The synthetic city's datasets: their columns with catalog metadata, the catalog view the
rules are checked against, and the ``<dataset>.toml`` metadata file written next to each CSV
(format: docs/rules.md, "Dataset metadata")."""
from __future__ import annotations

__all__ = ["DATASETS", "catalog", "metadata_toml"]

# (name, type, description, sharing, sensitivity, unit)
_ID = ("id_number", "text", "Resident identity number (GB 11643)", "conditional", 3, None)

DATASETS: dict[str, dict] = {
    "civil_affairs.applicants": {
        "description": "Social-assistance applicants and their household members (社会救助申请家庭成员)",
        "columns": [
            ("id_number", "text", "Resident identity number (GB 11643)", "closed", 3, None),
            ("household_id", "text", "Household case number", "closed", 2, None),
            ("name", "text", "Full name", "closed", 3, None),
            ("district", "text", "District of residence", "conditional", 1, None),
        ],
    },
    "public_security.vehicles": {
        "description": "Registered motor vehicles by owner (机动车登记)",
        "columns": [
            _ID,
            ("plate", "text", "Licence plate", "closed", 3, None),
            ("vehicle_type", "text", "car, truck or motorcycle", "conditional", 2, None),
            ("registered_on", "date", "Date of first registration", "conditional", 2, None),
        ],
    },
    "housing.properties": {
        "description": "Real-estate titles by owner (不动产登记)",
        "columns": [
            _ID,
            ("property_id", "text", "Real-estate title number", "closed", 3, None),
            ("usage", "text", "residential or commercial", "conditional", 2, None),
            ("area_m2", "decimal", "Floor area", "conditional", 2, "m2"),
            ("district", "text", "District of the property", "conditional", 1, None),
        ],
    },
    "hrss.pensions": {
        "description": "Basic pension payments (基本养老金发放)",
        "columns": [
            _ID,
            ("monthly_amount", "decimal", "Monthly pension paid", "conditional", 3, "CNY/month"),
        ],
    },
    "tax.wages": {
        "description": "Wage income reported by employers, one row per employer (个人所得税扣缴申报)",
        "columns": [
            _ID,
            ("employer", "text", "Withholding employer", "closed", 3, None),
            ("monthly_income", "decimal", "Monthly wage from this employer", "conditional", 4, "CNY/month"),
        ],
    },
    "market_regulation.businesses": {
        "description": "Businesses by legal representative or proprietor (市场主体登记)",
        "columns": [
            _ID,
            ("business_id", "text", "Unified social credit code (GB 32100)", "open", 1, None),
            ("business_name", "text", "Registered name", "open", 1, None),
            ("status", "text", "active or revoked", "open", 1, None),
        ],
    },
}


# Declared bounds (a differentially private SUM clips each subject into them) and categories (a
# federated query may GROUP BY them at the provider): docs/query.md.
_EXTRA: dict[tuple[str, str], str] = {
    ("public_security.vehicles", "vehicle_type"): 'categories = ["car", "truck", "motorcycle"]',
    ("housing.properties", "usage"): 'categories = ["residential", "commercial"]',
    ("housing.properties", "area_m2"): "min = 0\nmax = 1000",
    ("hrss.pensions", "monthly_amount"): "min = 0\nmax = 20000",
    ("tax.wages", "monthly_income"): "min = 0\nmax = 100000",
    ("market_regulation.businesses", "status"): 'categories = ["active", "revoked"]',
}


def catalog() -> dict[str, dict]:
    """The synthetic city's catalog: ``{"agency.dataset": {"key_column", "columns"}}``."""
    return {
        ds: {"key_column": "id_number", "columns": {c[0]: c[1] for c in spec["columns"]}}
        for ds, spec in DATASETS.items()
    }


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def metadata_toml(dataset: str) -> str:
    """The ``<dataset>.toml`` metadata text for one of :data:`DATASETS`."""
    spec = DATASETS[dataset]
    lines = [
        f"# Column metadata for {dataset} (format: docs/rules.md, \"Dataset metadata\")",
        'key_column = "id_number"',
        f"description = {_toml_str(spec['description'])}",
        "",
    ]
    for name, ctype, desc, sharing, sens, unit in spec["columns"]:
        lines.append(f"[columns.{name}]")
        lines.append(f'type = "{ctype}"')
        lines.append(f"description = {_toml_str(desc)}")
        lines.append(f'sharing = "{sharing}"')
        lines.append(f"sensitivity = {sens}")
        if unit:
            lines.append(f"unit = {_toml_str(unit)}")
        if (dataset, name) in _EXTRA:
            lines.append(_EXTRA[dataset, name])
        lines.append("")
    return "\n".join(lines)

