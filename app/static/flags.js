// The API's quality flags in words: the one place the page turns a flag into a sentence.
// The flags come from galmet/images.py (uploads), galmet/objects.py (identification),
// app/predictions.py and app/errors.py; DESIGN.md lists them.
const SENTENCES = {
  grayscale_converted:
    "The image was grayscale: it was copied into three colour channels, but the model " +
    "learned from gri colour images.",
  not_square: "The image was not square: it was stretched to a square.",
  resized:
    "The image was not the size the model was trained on: it was resized, so its pixel " +
    "scale may not be SDSS's.",
  no_source_at_centre:
    "No source stands out at the centre of the image: the value may not be about a galaxy.",
  no_object: "No SDSS object lies within the match radius of the position.",
  object_unknown:
    "The SDSS object at the position could not be looked up (SkyServer failed): the " +
    "prediction is for the cutout at the position as given.",
  not_a_galaxy:
    "The SDSS object at the position is not a galaxy (a star or another type): the model " +
    "only learned galaxies.",
  blank_cutout: "The SDSS cutout is blank.",
  off_footprint: "The position is outside the SDSS imaging footprint.",
  blank: "The image is blank (near-black): there is nothing to measure.",
  no_galaxy: "There is no galaxy at this position.",
};

/** One flag as a sentence; a flag without one is shown as it is. */
export function flagSentence(flag) {
  if (flag in SENTENCES) return SENTENCES[flag];
  const mode = /^converted_from_(.+)$/.exec(flag);
  if (mode) return `The image was in ${mode[1].toUpperCase()} mode: it was converted to RGB.`;
  return `Flag: ${flag}.`;
}
