"""Masking examples."""
from __future__ import annotations

import pytest

from pc_common.errors import InvalidInput
from pc_node.masking import mask, mask_address, mask_id, mask_name, mask_phone


def test_mask_id():
    assert mask_id("110101199003071234") == "110101********1234"
    assert mask_id(" 11010519491231002x ") == "110105********002X"
    assert mask_id("123") == "***"
    assert mask_id("") == ""


@pytest.mark.parametrize("name,masked", [
    ("张三", "张*"), ("张三丰", "张**"), ("欧阳娜娜", "欧***"), ("张", "*"), (" 李 四 ", "李*"), ("", ""),
])
def test_mask_name(name, masked):
    assert mask_name(name) == masked


@pytest.mark.parametrize("phone,masked", [
    ("13812345678", "138****5678"),
    ("138 1234 5678", "138****5678"),
    ("+86 138-1234-5678", "138****5678"),
    ("008613812345678", "138****5678"),
    ("010-62345678", "010****5678"),
    ("12345", "*****"),
])
def test_mask_phone(phone, masked):
    assert mask_phone(phone) == masked


@pytest.mark.parametrize("address,masked", [
    ("北京市朝阳区建国路88号", "北京市朝阳区****"),
    ("广东省广州市天河区体育西路100号", "广东省广州市天河区****"),
    ("上海市浦东新区世纪大道1号", "上海市浦东新区****"),
    ("浙江省杭州市西湖区", "浙江省杭州市西湖区"),
    ("江苏省苏州市昆山市玉山镇", "江苏省苏州市昆山市****"),
    ("广西壮族自治区南宁市青秀区民族大道", "广西壮族自治区南宁市青秀区****"),
    ("新疆维吾尔自治区阿克苏地区库车市乌恰镇", "新疆维吾尔自治区阿克苏地区库车市****"),
    ("河北省保定市涞源县城关镇", "河北省保定市涞源县****"),
    ("某某市幸福小区3号楼", "某某市****"),  # a housing estate is not a district
    ("中关村大街1号海淀区", "****"),
    ("建国路88号", "****"),
    ("", ""),
])
def test_mask_address(address, masked):
    assert mask_address(address) == masked


def test_dispatcher():
    assert mask("110101199003071234", "id_number") == "110101********1234"
    assert mask("张三", "name") == "张*"
    assert mask("13812345678", "phone") == "138****5678"
    assert mask("北京市朝阳区建国路88号", "address") == "北京市朝阳区****"
    assert mask("anything", "full") == "****"
    assert mask(None, "name") is None
    with pytest.raises(InvalidInput):
        mask("x", "salary")
    with pytest.raises(InvalidInput):
        mask_name(123)  # type: ignore[arg-type]
