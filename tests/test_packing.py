import pytest
import torch

from qsd.errors import QsdError
from qsd.packed import BLOCK, pack_codes, packed_row_bytes, planes, reference, unpack_codes


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("k", [1, 63, 64, 65, 200, 1152])
def test_pack_unpack_identity(bits, k):
    codes = torch.randint(0, 1 << bits, (7, k), generator=torch.Generator().manual_seed(bits * k), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (7, packed_row_bytes(k, bits))
    assert torch.equal(unpack_codes(packed, bits, k), codes)


@pytest.mark.parametrize("bits", range(2, 9))
def test_exactly_b_bits_per_weight(bits):
    assert sum(planes(bits)) == bits
    assert packed_row_bytes(10 * BLOCK, bits) * 8 == 10 * BLOCK * bits


def test_layout_of_a_4bit_block():
    codes = (torch.arange(BLOCK, dtype=torch.uint8) % 16).view(1, -1)
    packed = pack_codes(codes, 4)[0]
    # byte i holds code i (low nibble) and code 32 + i (high nibble)
    assert [int(b) for b in packed[:3]] == [0x00, 0x11, 0x22]


def test_layout_of_a_3bit_block():
    codes = torch.zeros(1, BLOCK, dtype=torch.uint8)
    codes[0, 17] = 0b110  # low two bits 0b10 into the 2-bit plane, high bit into the 1-bit plane
    packed = pack_codes(codes, 3)[0]
    assert packed.shape == (24,)
    assert int(packed[1]) == 0b10 << 2  # code 17: byte 17 mod 16, slot 17 div 16
    assert int(packed[16 + 1]) == 1 << 2  # code 17: byte 17 mod 8, slot 17 div 8


def test_bad_input_is_refused():
    with pytest.raises(QsdError, match="does not fit in 3 bits"):
        pack_codes(torch.full((1, 4), 9, dtype=torch.uint8), 3)
    with pytest.raises(QsdError, match="2..8 bits"):
        pack_codes(torch.zeros(1, 4, dtype=torch.uint8), 1)
    with pytest.raises(QsdError, match="uint8"):
        unpack_codes(torch.zeros(1, 5, dtype=torch.uint8), 4, 64)


def test_reference_ops_agree_with_dense_weights():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (5, 70), generator=gen, dtype=torch.uint8)
    table = torch.randn(5, 8, generator=gen)
    packed = pack_codes(codes, 3)
    weight = torch.gather(table, 1, codes.long())
    assert torch.equal(reference.lut_decode(packed, table, 3, 70), weight)
    assert torch.equal(reference.lut_decode(packed, table[:1], 3, 70), table[0][codes.long()])
    x = torch.randn(4, 70, generator=gen)
    torch.testing.assert_close(reference.lut_linear(x, packed, table, 3, 70), x @ weight.t())
    xq = torch.randint(-127, 128, (4, 70), generator=gen, dtype=torch.int8)
    table_q = torch.randint(-127, 128, (5, 8), generator=gen, dtype=torch.int8)
    expected = xq.int() @ torch.gather(table_q, 1, codes.long()).int().t()
    assert torch.equal(reference.lut_mm_int8(xq, packed, table_q, 3, 70), expected)
