package store

import (
	"embed"
	"fmt"
	"path"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Stored JSON is compressed with zstd and a dictionary of FHIR JSON
// (dict/, made by gendict from the Synthea resources in testdata): a
// resource of a few hundred bytes shrinks to about a third with it, to
// two thirds without. Each frame names its dictionary, so a later
// dictionary can be added beside this one; one that records were written
// with must never be removed.
//
//go:embed dict/*.zdict
var dictFiles embed.FS

// packDict is the dictionary new records are compressed with.
const packDict = "dict/fhir-r4-32769.zdict"

var codec struct {
	once sync.Once
	enc  *zstd.Encoder
	dec  *zstd.Decoder
	err  error
}

func codecs() (*zstd.Encoder, *zstd.Decoder, error) {
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
		pack, err := dictFiles.ReadFile(packDict)
		if err != nil {
			codec.err = err
			return
		}
		// EncodeAll and DecodeAll are safe for concurrent use; one
		// encoder and one decoder serve every goroutine. Literals are
		// not entropy coded: a resource of a few hundred bytes grows by
		// a few bytes, and reads back several times faster (no Huffman
		// table to read per record), which is what a read spends.
		if codec.enc, codec.err = zstd.NewWriter(nil, zstd.WithEncoderDict(pack),
			zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false),
			zstd.WithSingleSegment(true), zstd.WithLowerEncoderMem(true),
			zstd.WithNoEntropyCompression(true)); codec.err != nil {
			return
		}
		codec.dec, codec.err = zstd.NewReader(nil, zstd.WithDecoderDicts(dicts...),
			zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(64<<20))
	})
	return codec.enc, codec.dec, codec.err
}

// packJSON appends the compressed form of json to dst.
func packJSON(dst, json []byte) []byte {
	enc, _, err := codecs()
	if err != nil {
		panic(fmt.Sprintf("store: zstd encoder: %v", err)) // the embedded dictionary is broken: a build error
	}
	return enc.EncodeAll(json, dst)
}

// unpackJSON appends to dst the JSON that packJSON compressed into b.
func unpackJSON(dst, b []byte) ([]byte, error) {
	_, dec, err := codecs()
	if err != nil {
		return nil, err
	}
	out, err := dec.DecodeAll(b, dst)
	if err != nil {
		return nil, fmt.Errorf("store: corrupt compressed record: %w", err)
	}
	return out, nil
}
