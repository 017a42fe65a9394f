//! [`ChannelDescriptor`]: what a reactor declares about each channel it owns, and the checks an
//! [`MConnection`](super::MConnection) runs on the set of descriptors it is built from.

use super::config::MConnConfigError;

/// At most this many channels per connection (TM2's `maxNumChannels`, reference appendix A).
pub const MAX_CHANNELS: usize = 16;

/// One channel of a connection: its id on the wire, its share of the bandwidth and its queue and
/// reassembly limits. Defaults are TM2's (`ChannelDescriptor` in
/// `tm2/pkg/p2p/conn/connection.go`).
///
/// ```
/// use tm2_p2p::mconn::ChannelDescriptor;
/// let blocks = ChannelDescriptor::new(0x40)
///     .with_priority(10)
///     .with_send_queue_capacity(1000)
///     .with_recv_buffer_capacity(204_800);
/// assert_eq!(blocks.recv_message_capacity, 22_020_096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelDescriptor {
    /// The channel id carried in every packet; unique within a connection.
    pub id: u8,
    /// Relative share of the send bandwidth when several channels have data: the scheduler
    /// sends next on the channel with the lowest recently-sent bytes ÷ priority. Must be > 0.
    pub priority: u32,
    /// How many whole messages may wait in the send queue (besides the one being split into
    /// packets). A full queue makes `try_send` fail with `Full`. Must be > 0.
    pub send_queue_capacity: usize,
    /// Initial capacity of the reassembly buffer for a multi-packet message (an allocation
    /// hint, capped by `recv_message_capacity`). Must be > 0.
    pub recv_buffer_capacity: usize,
    /// Largest reassembled message accepted on this channel; a peer sending more is
    /// disconnected with `MessageTooLarge`, and no buffer ever grows past it. Must be > 0.
    pub recv_message_capacity: usize,
}

impl ChannelDescriptor {
    /// TM2's default send queue capacity, in messages.
    pub const DEFAULT_SEND_QUEUE_CAPACITY: usize = 1;
    /// TM2's default initial reassembly buffer, in bytes.
    pub const DEFAULT_RECV_BUFFER_CAPACITY: usize = 4096;
    /// TM2's default largest received message: 21 MiB (`defaultRecvMessageCapacity`).
    pub const DEFAULT_RECV_MESSAGE_CAPACITY: usize = 22_020_096;

    /// A descriptor for channel `id` with TM2's defaults: priority 1, send queue 1 message,
    /// receive buffer 4096 bytes, largest message 22020096 bytes.
    pub const fn new(id: u8) -> Self {
        Self {
            id,
            priority: 1,
            send_queue_capacity: Self::DEFAULT_SEND_QUEUE_CAPACITY,
            recv_buffer_capacity: Self::DEFAULT_RECV_BUFFER_CAPACITY,
            recv_message_capacity: Self::DEFAULT_RECV_MESSAGE_CAPACITY,
        }
    }

    /// Sets [`priority`](Self::priority).
    #[must_use]
    pub const fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets [`send_queue_capacity`](Self::send_queue_capacity).
    #[must_use]
    pub const fn with_send_queue_capacity(mut self, capacity: usize) -> Self {
        self.send_queue_capacity = capacity;
        self
    }

    /// Sets [`recv_buffer_capacity`](Self::recv_buffer_capacity).
    #[must_use]
    pub const fn with_recv_buffer_capacity(mut self, capacity: usize) -> Self {
        self.recv_buffer_capacity = capacity;
        self
    }

    /// Sets [`recv_message_capacity`](Self::recv_message_capacity).
    #[must_use]
    pub const fn with_recv_message_capacity(mut self, capacity: usize) -> Self {
        self.recv_message_capacity = capacity;
        self
    }

    /// Checks this descriptor alone (priority and capacities > 0). TM2 panics on a bad
    /// priority and silently replaces zero capacities with defaults; we refuse both.
    pub fn validate(&self) -> Result<(), MConnConfigError> {
        if self.priority == 0 {
            return Err(MConnConfigError::ZeroPriority(self.id));
        }
        for (field, value) in [
            ("send_queue_capacity", self.send_queue_capacity),
            ("recv_buffer_capacity", self.recv_buffer_capacity),
            ("recv_message_capacity", self.recv_message_capacity),
        ] {
            if value == 0 {
                return Err(MConnConfigError::ZeroCapacity {
                    channel: self.id,
                    field,
                });
            }
        }
        Ok(())
    }
}

/// Maps channel ids to positions in the connection's channel list: the ids in position order.
/// A lookup scans at most [`MAX_CHANNELS`] (16) bytes; a table indexed by id would take 256
/// bytes in both the sender and the receiver of every connection.
#[derive(Debug, Clone)]
pub(crate) struct ChannelIndex {
    /// `ids[pos]` is the id of the channel at `pos`, for `pos < len`.
    ids: [u8; MAX_CHANNELS],
    /// How many channels are indexed.
    len: u8,
}

impl ChannelIndex {
    /// Validates every descriptor and the set (at most [`MAX_CHANNELS`], unique ids) and
    /// builds the index; positions follow the order of `channels` (the scheduler's tie-break).
    pub(crate) fn new(channels: &[ChannelDescriptor]) -> Result<Self, MConnConfigError> {
        if channels.len() > MAX_CHANNELS {
            return Err(MConnConfigError::TooManyChannels {
                count: channels.len(),
                max: MAX_CHANNELS,
            });
        }
        let mut index = Self {
            ids: [0; MAX_CHANNELS],
            len: 0,
        };
        for desc in channels {
            index.insert(desc)?;
        }
        Ok(index)
    }

    /// Validates `desc` and records it at the next position, i.e. last in the scheduler's
    /// tie-break order. The same checks as [`new`](Self::new): the descriptor itself, a unique
    /// id, at most [`MAX_CHANNELS`]. On error nothing changes.
    pub(crate) fn insert(&mut self, desc: &ChannelDescriptor) -> Result<(), MConnConfigError> {
        desc.validate()?;
        if self.get(desc.id).is_some() {
            return Err(MConnConfigError::DuplicateChannel(desc.id));
        }
        let len = usize::from(self.len);
        if len >= MAX_CHANNELS {
            return Err(MConnConfigError::TooManyChannels {
                count: len + 1,
                max: MAX_CHANNELS,
            });
        }
        self.ids[len] = desc.id;
        // len < MAX_CHANNELS (16), checked above.
        self.len += 1;
        Ok(())
    }

    /// The position of channel `id`, if the connection has it.
    pub(crate) fn get(&self, id: u8) -> Option<usize> {
        self.ids[..usize::from(self.len)]
            .iter()
            .position(|&c| c == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_priority_is_refused() {
        let err = ChannelIndex::new(&[ChannelDescriptor::new(7).with_priority(0)]).unwrap_err();
        assert_eq!(err, MConnConfigError::ZeroPriority(7));
    }

    #[test]
    fn zero_capacities_are_refused_naming_the_field() {
        let base = ChannelDescriptor::new(1);
        for (desc, field) in [
            (base.with_send_queue_capacity(0), "send_queue_capacity"),
            (base.with_recv_buffer_capacity(0), "recv_buffer_capacity"),
            (base.with_recv_message_capacity(0), "recv_message_capacity"),
        ] {
            assert_eq!(
                desc.validate(),
                Err(MConnConfigError::ZeroCapacity { channel: 1, field })
            );
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let chans = [
            ChannelDescriptor::new(1),
            ChannelDescriptor::new(2),
            ChannelDescriptor::new(1).with_priority(5),
        ];
        assert_eq!(
            ChannelIndex::new(&chans).unwrap_err(),
            MConnConfigError::DuplicateChannel(1)
        );
    }

    #[test]
    fn more_than_sixteen_channels_are_refused() {
        let chans: Vec<_> = (0..17).map(ChannelDescriptor::new).collect();
        assert_eq!(
            ChannelIndex::new(&chans).unwrap_err(),
            MConnConfigError::TooManyChannels { count: 17, max: 16 }
        );
        assert!(ChannelIndex::new(&chans[..16]).is_ok());
    }

    #[test]
    fn insert_checks_like_new_and_appends_last() {
        let mut idx = ChannelIndex::new(&[ChannelDescriptor::new(5)]).unwrap();
        assert_eq!(
            idx.insert(&ChannelDescriptor::new(5)),
            Err(MConnConfigError::DuplicateChannel(5))
        );
        assert_eq!(
            idx.insert(&ChannelDescriptor::new(6).with_priority(0)),
            Err(MConnConfigError::ZeroPriority(6))
        );
        assert_eq!(idx.get(6), None, "a refused descriptor leaves no trace");
        idx.insert(&ChannelDescriptor::new(6)).unwrap();
        assert_eq!(idx.get(6), Some(1));
        for (pos, id) in (2..16).zip(7u8..) {
            idx.insert(&ChannelDescriptor::new(id)).unwrap();
            assert_eq!(idx.get(id), Some(pos));
        }
        assert_eq!(
            idx.insert(&ChannelDescriptor::new(0xee)),
            Err(MConnConfigError::TooManyChannels { count: 17, max: 16 })
        );
        assert_eq!(idx.get(0xee), None);
    }

    #[test]
    fn defaults_are_tm2s() {
        let d = ChannelDescriptor::new(0x30);
        assert_eq!(
            (
                d.priority,
                d.send_queue_capacity,
                d.recv_buffer_capacity,
                d.recv_message_capacity
            ),
            (1, 1, 4096, 22_020_096)
        );
    }

    #[test]
    fn index_maps_ids_to_positions_in_order() {
        let idx = ChannelIndex::new(&[
            ChannelDescriptor::new(0xff),
            ChannelDescriptor::new(0),
            ChannelDescriptor::new(0x40),
        ])
        .unwrap();
        assert_eq!(idx.get(0xff), Some(0));
        assert_eq!(idx.get(0), Some(1));
        assert_eq!(idx.get(0x40), Some(2));
        assert_eq!(idx.get(0x41), None);
    }
}
