"""The synthetic city's residents: households of 1-6 people (head, spouse, children, elderly
parents) with Chinese names and resident identity numbers (GB 11643) whose region code, birth
date and sex digit fit each member, plus the vocabularies and Arrow text helpers the table
writers share.

Everything is drawn from the generator passed in, against the fixed :data:`REFERENCE_DATE`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pc_node import idnum

REFERENCE_DATE = "2024-06-30"           # "today" in the synthetic city
REF = np.datetime64(REFERENCE_DATE, "D")

# ---------------------------------------------------------------------------
# Identity numbers (GB 11643-1999): vectorised check characters (the scalar
# reference is pc_node.idnum; tests check every generated number with it)
# ---------------------------------------------------------------------------

ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
ID_CHECK = "10X98765432"


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits (see pc_node.idnum)."""
    return idnum.check_digit(first17)


def id_check_vec(body: np.ndarray) -> np.ndarray:
    """Check-character index (into ``ID_CHECK``) for 17-digit int64 bodies."""
    total = np.zeros(len(body), dtype=np.int64)
    rest = body.copy()
    for w in ID_WEIGHTS[::-1]:
        total += (rest % 10) * w
        rest //= 10
    return total % 11


# ---------------------------------------------------------------------------
# Name and place vocabularies
# ---------------------------------------------------------------------------

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官")
MALE_CHARS = "伟强磊军勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆旭宁龙林阳建国志文东海峰亮成兵晨博睿泽轩浩嘉豪"
FEMALE_CHARS = "芳娜敏静丽艳娟霞燕玲桂英秀兰红梅琳婷雪慧颖倩洁佳晶玉萍琴云莉欣怡雨思萱悦彤婉妍诗涵梓"

# Residence districts of the city (名称, weight) and their GB/T 2260 codes.
DISTRICTS = ("罗湖区", "福田区", "南山区", "宝安区", "龙岗区", "盐田区", "龙华区", "坪山区", "光明区")
DISTRICT_W = np.array([9, 13, 14, 22, 20, 2, 12, 3, 5], dtype=float)
DISTRICT_CODES = (440303, 440304, 440305, 440306, 440307, 440308, 440306, 440307, 440306)
# Birthplace registration codes of people who moved to the city (real codes).
OTHER_REGIONS = (
    110101, 110105, 110108, 130102, 310104, 310115, 320102, 330106, 350102, 360102, 360721, 370102,
    410105, 420106, 430102, 430524, 431102, 441302, 441581, 445202, 450103, 500103, 510107, 522601,
    610113,
)


# ---------------------------------------------------------------------------
# Arrow text columns
# ---------------------------------------------------------------------------

def strings(values: list[str] | tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pa.array(list(values), type=pa.string()).take(pa.array(idx))


def join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def int_str(a: np.ndarray, width: int = 0) -> pa.Array:
    s = pa.array(a).cast(pa.string())
    return pc.utf8_lpad(s, width, "0") if width else s


def money_str(cents: np.ndarray) -> pa.Array:
    return join(int_str(cents // 100), ".", int_str(cents % 100, 2))


def date_str(days: np.ndarray) -> pa.Array:
    return pa.array(days.astype("datetime64[D]").astype(str))


def unique_codes(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    """``n`` distinct integers in ``[0, space)``, scattered (affine map of a range)."""
    if n > space:
        raise ValueError("code space too small")
    while True:
        stride = int(rng.integers(space // 3, space))
        if np.gcd(stride, space) == 1:
            break
    start = int(rng.integers(0, space))
    return (start + np.arange(n, dtype=np.int64) * stride) % space


# ---------------------------------------------------------------------------
# People
# ---------------------------------------------------------------------------

@dataclass
class People:
    hh: np.ndarray          # household index per person
    sex_male: np.ndarray
    age: np.ndarray
    birth: np.ndarray       # datetime64[D]
    ids: np.ndarray         # str (U18)
    id_is_x: np.ndarray
    names: pa.Array
    is_head: np.ndarray
    is_spouse: np.ndarray


def make_people(rng: np.random.Generator, sizes: np.ndarray, hh_district: np.ndarray,
                hh_surname: np.ndarray, hh_origin: np.ndarray) -> People:
    H = len(sizes)
    N = int(sizes.sum())
    hh = np.repeat(np.arange(H), sizes)
    starts = np.cumsum(sizes) - sizes
    pos = np.arange(N) - np.repeat(starts, sizes)
    size_p = sizes[hh]

    # Head's age: single-person households are young workers or the elderly.
    head_age = rng.integers(24, 78, H)
    single = sizes == 1
    young = rng.random(H) < 0.45
    head_age[single & young] = rng.integers(20, 40, int((single & young).sum()))
    head_age[single & ~young] = rng.integers(58, 95, int((single & ~young).sum()))
    ha = head_age[hh]

    is_head = pos == 0
    spouse_hh = rng.random(H) < 0.88
    is_spouse = (pos == 1) & spouse_hh[hh]
    # Elderly parents in the last one/two slots of 5- and 6-person households,
    # unless the head is too old to have living parents (then grandchildren).
    n_elder = np.where(sizes == 6, 2, np.where(sizes == 5, 1, 0))
    elder_slot = (pos >= size_p - n_elder[hh]) & (pos >= 2)
    is_elder = elder_slot & (ha <= 66)
    is_grandchild = elder_slot & ~is_elder
    is_child = ~(is_head | is_spouse | is_elder | is_grandchild)

    age = np.empty(N, dtype=np.int64)
    age[is_head] = head_age
    age[is_spouse] = np.clip(ha[is_spouse] + rng.integers(-6, 5, int(is_spouse.sum())), 19, 99)
    n = int(is_elder.sum())
    age[is_elder] = np.minimum(ha[is_elder] + rng.integers(22, 34, n), 99)
    n = int(is_grandchild.sum())
    age[is_grandchild] = rng.integers(0, 16, n)
    span = np.clip(ha[is_child] - 20, 1, 40)
    age[is_child] = (rng.random(int(is_child.sum())) * span).astype(np.int64)

    male = rng.random(N) < 0.5
    head_male = rng.random(H) < 0.62
    male[is_head] = head_male
    male[is_spouse] = ~head_male[hh[is_spouse]]
    # Two elderly parents: father then mother.
    male[is_elder & (pos == size_p - 2)] = True
    male[is_elder & (pos == size_p - 1) & (n_elder[hh] == 2)] = False

    # Birth date consistent with age on the reference date.
    offset = age * 365 + age // 4 + rng.integers(0, 365, N)
    birth = REF - offset.astype("timedelta64[D]")

    # Region of registration: children of the city get the district's code,
    # others mostly the household's origin.
    region = np.where(rng.random(N) < 0.75, hh_origin[hh],
                      np.array(OTHER_REGIONS + DISTRICT_CODES[:6])[rng.integers(0, 31, N)])
    local_child = (is_child | is_grandchild) & (age < 25)
    region[local_child] = np.array(DISTRICT_CODES)[hh_district[hh[local_child]]]

    y = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    m = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    d = (birth - birth.astype("datetime64[M]")).astype(np.int64) + 1
    dates = y * 10_000 + m * 100 + d
    # Sequence: odd for men, even for women (GB 11643 order code).
    seq = rng.integers(0, 499, N) * 2 + np.where(male, 1, 2)
    body = (region.astype(np.int64) * 10**8 + dates) * 1000 + seq
    # Make identity numbers unique: redraw the sequence of later duplicates.
    for _ in range(100):
        _, first = np.unique(body, return_index=True)
        dup = np.ones(N, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        k = int(dup.sum())
        seq_new = rng.integers(0, 499, k) * 2 + np.where(male[dup], 1, 2)
        body[dup] = body[dup] // 1000 * 1000 + seq_new
    else:  # pragma: no cover - 500 codes per sex, region and day
        raise RuntimeError("could not make identity numbers unique")
    check = id_check_vec(body)
    ids = pc.binary_join_element_wise(pa.array(body).cast(pa.string()),
                                      strings(list(ID_CHECK), check), "")
    ids_np = np.asarray(ids.to_numpy(zero_copy_only=False), dtype="U18")

    # Names: household surname for head, children, grandchildren, elderly father.
    sur_pool = list(SURNAMES) + list(COMPOUND_SURNAMES)
    w = 1.0 / np.arange(1, len(sur_pool) + 1) ** 0.9
    w[-len(COMPOUND_SURNAMES):] = w[-1] * 0.2
    w /= w.sum()
    own_sur = rng.choice(len(sur_pool), N, p=w)
    sur = hh_surname[hh].copy()
    keeps = is_head | is_child | is_grandchild | (is_elder & male)
    sur[~keeps] = own_sur[~keeps]
    male_chars, female_chars = list(MALE_CHARS), list(FEMALE_CHARS)
    u1, u2 = rng.random(N), rng.random(N)

    def given_char(u: np.ndarray) -> pa.Array:
        return pc.if_else(pa.array(male),
                          strings(male_chars, (u * len(male_chars)).astype(np.int64)),
                          strings(female_chars, (u * len(female_chars)).astype(np.int64)))

    given1, given2 = given_char(u1), given_char(u2)
    two = pa.array(rng.random(N) < 0.72)
    given = pc.if_else(two, join(given1, given2), given1)
    names = join(strings(sur_pool, sur), given)
    return People(hh, male, age, birth, ids_np, check == 2, names, is_head, is_spouse)


def give_x_check(P: People, person: int) -> bool:
    """Change one person's order code so the check character is X (keeps the sex digit)."""
    current = P.ids[person]
    for seq in range(int(current[16]) % 2 or 2, 1000, 2):
        body = current[:14] + f"{seq:03d}"
        if id_check_char(body) == "X" and not (P.ids == body + "X").any():
            P.ids[person] = body + "X"
            P.id_is_x[person] = True
            return True
    return False  # pragma: no cover - some order code always works


def random_identity_numbers(n: int, seed: int = 0, regions: tuple[int, ...] = (650102, 650103, 650104, 650105)
                            ) -> list[str]:
    """``n`` distinct-ish valid identity numbers outside the city's region codes (for padding and
    benchmarks): birth dates 1940–2009, random order codes, correct check characters."""
    rng = np.random.default_rng(seed)
    region = np.array(regions, dtype=np.int64)[rng.integers(0, len(regions), n)]
    birth = np.datetime64("1940-01-01") + rng.integers(0, 365 * 70, n).astype("timedelta64[D]")
    y = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    m = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    d = (birth - birth.astype("datetime64[M]")).astype(np.int64) + 1
    body = region * 10**11 + (y * 10000 + m * 100 + d) * 10**3 + rng.integers(0, 1000, n)
    check = np.array(list("10X98765432"))[id_check_vec(body)]
    return [f"{b:017d}{c}" for b, c in zip(body.tolist(), check.tolist())]
