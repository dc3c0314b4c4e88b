//! Ready-made small clusters that several tests share.

use std::path::PathBuf;

use crate::link;
use crate::netns::Netns;
use crate::pod::Pod;
use crate::{ScratchDir, tables};

/// One podlane node: `node-a` (namespace `<tag>node`, its uplink `uplink` at
/// 192.168.`subnet`.1) with an underlay peer `node-b` (`<tag>peer`, .2) and two local pods,
/// p1 (10.244.1.2) and p2 (10.244.1.3). Fields drop pods first, as locals would.
#[derive(Debug)]
pub struct OneNode {
    pub p1: Pod,
    pub p2: Pod,
    pub peer: Netns,
    pub node: Netns,
    pub dir: ScratchDir,
    subnet: u8,
}

impl OneNode {
    pub fn new(tag: &str, subnet: u8) -> anyhow::Result<OneNode> {
        let dir = ScratchDir::new(tag)?;
        let node = Netns::create(&format!("{tag}node"))?;
        let peer = Netns::create(&format!("{tag}peer"))?;
        let (node_ip, peer_ip) = (format!("192.168.{subnet}.1"), format!("192.168.{subnet}.2"));
        link::underlay((&node, "uplink", &node_ip), (&peer, "eth0", &peer_ip), 1)?;
        let p1 = Pod::wire(&node, "p1", "veth-p1", "10.244.1.2", "0a:58:0a:f4:01:02")?;
        let p2 = Pod::wire(&node, "p2", "veth-p2", "10.244.1.3", "0a:58:0a:f4:01:03")?;
        Ok(OneNode { p1, p2, peer, node, dir, subnet })
    }

    /// Writes node-a's tables (both nodes, p1, p2 and `more` pods) and returns their path.
    pub fn write_tables(&self, more: &[&Pod]) -> anyhow::Result<PathBuf> {
        let underlay_ip = |host: u8| format!("192.168.{}.{host}", self.subnet);
        let nodes = [
            tables::node("node-a", &underlay_ip(1), "0a:aa:00:00:00:01", "10.244.1.0/24")?,
            tables::node("node-b", &underlay_ip(2), "0a:bb:00:00:00:01", "10.244.2.0/24")?,
        ];
        let pods: Vec<&Pod> =
            [&self.p1, &self.p2].into_iter().chain(more.iter().copied()).collect();
        let path = self.dir.path().join("tables.json");
        tables::write(&path, &tables::for_node("node-a", &nodes, &pods)?)?;
        Ok(path)
    }
}
