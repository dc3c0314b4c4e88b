//! VXLAN headers (RFC 7348 §5). Linux drops a received header with any flag other than I or
//! with reserved bits set (unless an extension such as GBP is enabled on the device), so podlane
//! sends exactly `08 00 00 00 | VNI 00` and accepts nothing else (REFERENCE.md).

use super::{WireError, be32, put32};

mod field {
    pub(super) const FLAGS_WORD: usize = 0;
    pub(super) const VNI_WORD: usize = 4;
    pub(super) const PAYLOAD: usize = 8;
}

/// The I flag: the VNI field is valid (RFC 7348 §5).
const FLAG_I: u32 = 0x0800_0000;

/// RFC 7348 §5:
/// ```text
/// |R|R|R|R|I|R|R|R|            Reserved                           |
/// |                VXLAN Network Identifier (VNI) |   Reserved    |
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

    pub fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Verifies only that the header fits; flag and reserved-bit policy is
    /// [`has_valid_flags`](Self::has_valid_flags), so the caller can count it separately.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < field::PAYLOAD {
            return Err(WireError::Truncated);
        }
        Ok(VxlanPacket { buffer })
    }

    pub fn flags_word(&self) -> u32 {
        be32(self.buffer.as_ref(), field::FLAGS_WORD)
    }

    /// I set, every other flag and reserved bit zero — what the Linux driver accepts.
    pub fn has_valid_flags(&self) -> bool {
        self.flags_word() == FLAG_I && be32(self.buffer.as_ref(), field::VNI_WORD) & 0xff == 0
    }

    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI_WORD) >> 8
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Writes the only header podlane sends: I flag, the VNI (24 bits), all reserved bits zero.
    pub fn emit(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        put32(b, field::FLAGS_WORD, FLAG_I);
        put32(b, field::VNI_WORD, (vni & 0x00ff_ffff) << 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_and_parse() {
        let mut b = [0xffu8; 8];
        VxlanPacket::new_unchecked(&mut b[..]).emit(4096);
        assert_eq!(b, [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00]);
        let v = VxlanPacket::new_checked(&b[..]).unwrap();
        assert!(v.has_valid_flags());
        assert_eq!(v.vni(), 4096);
    }

    #[test]
    fn flag_policy_matches_linux() {
        let base = [0x08, 0, 0, 0, 0, 0, 1, 0];
        assert!(VxlanPacket::new_checked(&base[..]).unwrap().has_valid_flags());
        let mut no_i = base;
        no_i[0] = 0x00;
        assert!(!VxlanPacket::new_checked(&no_i[..]).unwrap().has_valid_flags());
        let mut gbp = base;
        gbp[0] = 0x88;
        assert!(!VxlanPacket::new_checked(&gbp[..]).unwrap().has_valid_flags());
        let mut reserved = base;
        reserved[2] = 0x01;
        assert!(!VxlanPacket::new_checked(&reserved[..]).unwrap().has_valid_flags());
        let mut low = base;
        low[7] = 0x01;
        assert!(!VxlanPacket::new_checked(&low[..]).unwrap().has_valid_flags());
        assert_eq!(VxlanPacket::new_checked(&base[..7]).unwrap_err(), WireError::Truncated);
    }
}
