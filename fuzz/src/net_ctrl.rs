//! virtio-net control queue: the command parser on its own, then the device answering the
//! input's chains on queue 2, with announcements requested in between.

use devices::virtio::net::ctrl::{
    parse_request, Command, ANNOUNCE_ACK, CLASS_ANNOUNCE, CLASS_MAC, CLASS_MQ, CLASS_RX,
    CLASS_VLAN, HEADER_LEN, MAC_ADDR_SET, MAC_TABLE_SET, MAX_COMMAND_LEN, MAX_DESCRIPTORS,
};
use devices::virtio::net::{
    features, MacAddress, Net, NullBackend, ANNOUNCE, CTRL_QUEUE, LINK_UP, QUEUE_SIZE, TX_QUEUE,
};
use devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use crate::support::{follow, Guest, Input, DATA};

/// Descriptor flag: the chain continues at `next`.
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Classes the first readable bytes may be rewritten to, so random inputs reach every command.
const CLASSES: [u8; 6] = [
    CLASS_RX,
    CLASS_MAC,
    CLASS_ANNOUNCE,
    CLASS_VLAN,
    CLASS_MQ,
    0xff,
];

/// The control features a driver may accept, in any combination.
const CTRL_FEATURES: u64 = features::CTRL_VQ
    | features::CTRL_RX
    | features::CTRL_RX_EXTRA
    | features::CTRL_MAC_ADDR
    | features::GUEST_ANNOUNCE
    | features::STATUS
    | VIRTIO_RING_F_EVENT_IDX;

/// What a parsed command promises about the bytes it came from.
fn check_command(command: &Command, bytes: &[u8], acked: u64) {
    let data = bytes.len() - HEADER_LEN;
    match command {
        Command::RxMode { .. } => {
            assert_ne!(acked & features::CTRL_RX, 0);
            assert_eq!(data, 1);
        }
        Command::MacTable { unicast, multicast } => {
            assert_ne!(acked & features::CTRL_RX, 0);
            assert_eq!(data, 8 + 6 * (unicast.len() + multicast.len()));
        }
        Command::MacAddr(mac) => {
            assert_ne!(acked & features::CTRL_MAC_ADDR, 0);
            assert_eq!(data, 6);
            assert_eq!(mac.bytes()[0] & 1, 0, "unicast");
        }
        Command::AnnounceAck => {
            assert_ne!(acked & features::GUEST_ANNOUNCE, 0);
            assert_eq!(data, 0);
        }
    }
}

/// Rewrites the descriptor table as chains of two: the driver's bytes in the data area, then
/// a one-byte ack. Most requests are well-formed commands (with values and MAC-table counts
/// from the descriptors they replace); the rest keep the input's bytes and a random length.
fn well_formed_pairs(guest: &mut Guest) {
    let table = GuestAddress(guest.queue.desc_table());
    let count = guest.descriptors.len();
    for index in (0..count.saturating_sub(1)).step_by(2) {
        let old = guest.descriptors[index];
        let addr = DATA + index as u64 * 0x100;
        let pick = old.len() as usize ^ usize::from(old.next());
        let value = (old.addr().raw_value() & 0xff) as u8;
        let request: Option<Vec<u8>> = match pick % 8 {
            0 | 1 => Some(vec![CLASS_RX, (pick / 8 % 6) as u8, value]),
            2 => Some(vec![
                CLASS_MAC,
                MAC_ADDR_SET,
                value & 0xfe,
                1,
                2,
                3,
                4,
                value,
            ]),
            3 | 4 => {
                let (unicast, multicast) = (pick / 8 % 4, pick / 32 % 4);
                let mut bytes = vec![CLASS_MAC, MAC_TABLE_SET];
                bytes.extend((unicast as u32).to_le_bytes());
                bytes.extend(std::iter::repeat_n(value, 6 * unicast));
                bytes.extend((multicast as u32).to_le_bytes());
                bytes.extend(std::iter::repeat_n(value | 1, 6 * multicast));
                Some(bytes)
            }
            5 => Some(vec![CLASS_ANNOUNCE, ANNOUNCE_ACK]),
            _ => None,
        };
        let len = match &request {
            Some(bytes) => {
                guest.poke(GuestAddress(addr), bytes);
                bytes.len() as u32
            }
            None => old.len() % 64,
        };
        guest.descriptors[index] =
            Descriptor::new(addr, len, VIRTQ_DESC_F_NEXT, (index + 1) as u16);
        guest.descriptors[index + 1] = Descriptor::new(addr + 0x80, 1, VIRTQ_DESC_F_WRITE, 0);
    }
    for (index, desc) in guest.descriptors.iter().enumerate() {
        if let Some(addr) = table.checked_add(16 * index as u64) {
            let _ = guest.mem.write_obj(RawDescriptor::from(*desc), addr);
        }
    }
}

/// Feeds one input to the parser and to the device; panics only on a bug.
pub fn net_ctrl(data: &[u8]) {
    let mut input = Input::new(data);
    let control = input.byte();
    let acked = (input.u64() & CTRL_FEATURES) | VIRTIO_F_VERSION_1;

    // The byte parser alone, on a prefix of the input.
    let len = usize::from(input.u16()) % 64;
    let bytes: Vec<u8> = (0..len).map(|_| input.byte()).collect();
    if let Ok(command) = Command::parse(&bytes, acked) {
        check_command(&command, &bytes, acked);
    }

    let Some(mut guest) = Guest::from_input(&mut input) else {
        return;
    };
    // Random tables rarely have a request's shape: sometimes lay out well-formed pairs (the
    // driver's bytes, then a one-byte ack) so the commands themselves are reached.
    if control & 0x10 != 0 {
        well_formed_pairs(&mut guest);
    }
    // Give some chains a known class and command so every command is reached.
    if control & 0x11 == 0x01 {
        for desc in guest.descriptors.iter().step_by(2) {
            let class = CLASSES[(desc.len() as usize ^ usize::from(desc.next())) % CLASSES.len()];
            let command = (desc.next() % 7) as u8;
            guest.poke(desc.addr(), &[class, command]);
        }
    }

    // The chain parser alone, on each chain as the table links it.
    for head in 0..guest.descriptors.len() as u16 {
        let chain = follow(&guest.descriptors, head, MAX_DESCRIPTORS + 8);
        match parse_request(chain.iter().copied(), &guest.mem, acked) {
            Ok(request) => {
                assert!(guest.mem.check_range(request.ack, 1, Permissions::Write));
                let readable: Vec<_> = chain.iter().take_while(|d| !d.is_write_only()).collect();
                let total: usize = readable.iter().map(|d| d.len() as usize).sum();
                assert!((HEADER_LEN..=MAX_COMMAND_LEN).contains(&total));
                let mut bytes = vec![0u8; total];
                let mut at = 0;
                for desc in readable {
                    let len = desc.len() as usize;
                    guest
                        .mem
                        .read_slice(&mut bytes[at..at + len], desc.addr())
                        .expect("the parser checked the buffers");
                    at += len;
                }
                check_command(&request.command, &bytes, acked);
            }
            Err(rejected) => {
                if let Some(ack) = rejected.ack {
                    assert!(guest.mem.check_range(ack, 1, Permissions::Write));
                }
            }
        }
    }

    // The device, with the input's queue as its control queue.
    let mac = if control & 0x02 != 0 {
        MacAddress::new([0x52, 0x54, 0, 0, 0, 1]).ok()
    } else {
        None
    };
    let Ok(mut net) = Net::with_backend("fuzz".into(), mac, Box::new(NullBackend)) else {
        return;
    };
    net.set_acked_features(acked);
    let (Ok(rx), Ok(tx), Some(ctrl)) = (
        Queue::new(QUEUE_SIZE),
        Queue::new(QUEUE_SIZE),
        guest.queue(),
    ) else {
        return;
    };
    let mut queues = vec![rx, tx];
    if control & 0x04 == 0 {
        queues.push(ctrl);
    }
    if net
        .activate(guest.mem.clone(), Guest::interrupt(), queues)
        .is_err()
    {
        return;
    }
    if control & 0x08 != 0 {
        let _ = net.request_announce();
    }
    net.queue_notify(CTRL_QUEUE);
    net.queue_notify(TX_QUEUE);
    net.queue_notify(CTRL_QUEUE);

    // Every chain the device took was answered once, and nothing else.
    let answered = net.metrics().ctrl_ok + net.metrics().ctrl_rejected;
    let used_idx = guest
        .queue
        .used_ring()
        .checked_add(2)
        .and_then(|addr| guest.mem.read_obj::<u16>(GuestAddress(addr)).ok())
        .unwrap_or(0);
    if acked & features::CTRL_VQ == 0 || control & 0x04 != 0 {
        assert_eq!(
            answered, 0,
            "the control queue is used only when negotiated"
        );
    } else if answered > 0 {
        // The device writes its own used index (the fuzzed rings may overlap, so the value
        // before is anything). Chains with a head index past the ring are answered (rejected)
        // but cannot be returned, so the index may lag.
        assert!(u64::from(used_idx) <= answered);
    }
    let mut config = [0u8; 8];
    net.read_config(0, &mut config);
    assert_eq!(config[0] & 1, 0, "config space shows a unicast MAC");
    let status = u16::from_le_bytes([config[6], config[7]]);
    assert!(status == LINK_UP || status == LINK_UP | ANNOUNCE);
    if net.announce_pending() {
        assert_ne!(acked & features::GUEST_ANNOUNCE, 0);
    }
    assert!(net.reset());
    net.read_config(0, &mut config);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), LINK_UP);
}
