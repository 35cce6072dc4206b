package store

import (
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Stored JSON is compressed with a dictionary of FHIR JSON (dict/, made by
// gendict from the Synthea resources in testdata): a resource of a few
// hundred bytes shrinks to about a third with it, to two thirds without.
//
// A compressed body names its dictionary, so a later dictionary can be
// added beside this one; one that records were written with must never be
// removed. Two forms are read:
//
//   - S2 (github.com/klauspost/compress/s2), what is written now: one byte
//     naming the S2 dictionary (s2Dicts), then an S2 block (the uvarint
//     length of the JSON, then the block) compressed with that
//     dictionary. The byte is never 0x28, the first byte of a zstd frame.
//   - a zstd frame whose header names the zstd dictionary by ID (what
//     records were written with before; their literals are not entropy
//     coded and they carry no checksum).
//
// S2 is written because a zstd encoder with a dictionary restores its
// 256 KiB match table from the dictionary's on every frame, which costs
// several times the compression of a resource of a few hundred bytes;
// S2 looks the dictionary up in a table made once and clears only its
// own 64 KiB table. Compressed sizes are within a few percent of the
// zstd ones (smaller for short resources, larger for long ones).
//
//go:embed dict/*.zdict
var dictFiles embed.FS

// packDict is the zstd dictionary whose content is the S2 dictionary new
// records are compressed with.
const packDict = "dict/fhir-r4-32769.zdict"

// packS2Dict names the S2 dictionary new records are compressed with: the
// first byte of their compressed body.
const packS2Dict = 1

// maxRecordJSON bounds the JSON a compressed record may claim to hold.
const maxRecordJSON = 64 << 20

// zstdMagic is how a zstd frame begins (RFC 8878 section 3.1.1).
var zstdMagic = [4]byte{0x28, 0xb5, 0x2f, 0xfd}

var codec struct {
	once sync.Once
	dec  *zstd.Decoder
	// s2Dicts are the S2 dictionaries by the byte naming them. S2
	// dictionary n holds the content of the zstd dictionary s2DictFiles[n]
	// (its repeat offset 0): a frozen pairing, as the files are.
	s2Dicts map[byte]*s2.Dict
	err     error
}

// s2DictFiles are the zstd dictionaries whose content makes the S2
// dictionary of each naming byte. Never renumber or remove one.
var s2DictFiles = map[byte]string{packS2Dict: packDict}

func codecs() (*zstd.Decoder, map[byte]*s2.Dict, error) {
	codec.once.Do(func() {
		names, err := dictFiles.ReadDir("dict")
		if err != nil {
			codec.err = err
			return
		}
		var dicts [][]byte
		for _, n := range names {
			d, err := dictFiles.ReadFile(path.Join("dict", n.Name()))
			if err != nil {
				codec.err = err
				return
			}
			dicts = append(dicts, d)
		}
		codec.s2Dicts = map[byte]*s2.Dict{}
		for n, file := range s2DictFiles {
			b, err := dictFiles.ReadFile(file)
			if err != nil {
				codec.err = err
				return
			}
			zd, err := zstd.InspectDictionary(b)
			if err != nil {
				codec.err = fmt.Errorf("%s: %w", file, err)
				return
			}
			d := s2.MakeDictManual(zd.Content(), 0)
			if d == nil {
				codec.err = fmt.Errorf("%s: content of %d bytes does not make an S2 dictionary", file, len(zd.Content()))
				return
			}
			codec.s2Dicts[n] = d
		}
		// DecodeAll is safe for concurrent use; one decoder serves every
		// goroutine.
		codec.dec, codec.err = zstd.NewReader(nil, zstd.WithDecoderDicts(dicts...),
			zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(maxRecordJSON))
	})
	return codec.dec, codec.s2Dicts, codec.err
}

// packJSON appends the compressed form of json to dst: the byte naming
// the S2 dictionary, then the S2 block.
func packJSON(dst, json []byte) []byte {
	_, dicts, err := codecs()
	if err != nil {
		panic(fmt.Sprintf("store: compression dictionary: %v", err)) // the embedded dictionary is broken: a build error
	}
	dst = slices.Grow(dst, 1+s2.MaxEncodedLen(len(json)))
	dst = append(dst, packS2Dict)
	// Encode writes from the start of the slice it is given: give it
	// dst's free capacity.
	n := len(dicts[packS2Dict].Encode(dst[len(dst):], json))
	return dst[:len(dst)+n]
}

// packedLen is the length of the JSON that packJSON compressed into b, or
// -1 when b does not say.
func packedLen(b []byte) int {
	if isZstd(b) {
		var h zstd.Header
		if h.Decode(b) == nil && h.HasFCS && h.FrameContentSize < maxRecordJSON {
			return int(h.FrameContentSize)
		}
		return -1
	}
	if len(b) < 2 {
		return -1
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n >= maxRecordJSON {
		return -1
	}
	return int(n)
}

func isZstd(b []byte) bool { return len(b) >= 4 && [4]byte(b[:4]) == zstdMagic }

// unpackJSON appends to dst the JSON that packJSON (or the zstd encoder
// before it) compressed into b.
func unpackJSON(dst, b []byte) ([]byte, error) {
	dec, dicts, err := codecs()
	if err != nil {
		return nil, err
	}
	if isZstd(b) {
		out, err := dec.DecodeAll(b, dst)
		if err != nil {
			return nil, fmt.Errorf("store: corrupt compressed record: %w", err)
		}
		return out, nil
	}
	if len(b) == 0 {
		return nil, errors.New("store: corrupt compressed record: empty")
	}
	d := dicts[b[0]]
	if d == nil {
		return nil, fmt.Errorf("store: compressed record names unknown dictionary %d", b[0])
	}
	n := packedLen(b)
	if n < 0 {
		return nil, errors.New("store: corrupt compressed record: bad length")
	}
	dst = slices.Grow(dst, n)
	// Decode writes from the start of the slice it is given.
	out, err := d.Decode(dst[len(dst):len(dst)+n], b[1:])
	if err != nil {
		return nil, fmt.Errorf("store: corrupt compressed record: %w", err)
	}
	if len(out) != n {
		return nil, errors.New("store: corrupt compressed record: bad length")
	}
	return dst[:len(dst)+n], nil
}
