"""XML Schemas for checking what shelfwork's OAI-PMH provider answers, written for these tests
from the constraints of the published schemas (nothing is downloaded at run time):

- OAI-PMH 2.0 (http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd, described in the protocol's
  section 3 and its appendix): the envelope (responseDate, request, then errors or one verb's
  element); adminEmail must match `\\S+@(\\S+\\.)+\\S+`; setSpec and the set argument
  `([A-Za-z0-9\\-_\\.!~\\*'\\(\\)])+(:[A-Za-z0-9\\-_\\.!~\\*'\\(\\)]+)*`; metadataPrefix
  `[A-Za-z0-9\\-_\\.!~\\*'\\(\\)]+`; protocolVersion "2.0"; deletedRecord no / persistent /
  transient; granularity YYYY-MM-DD or YYYY-MM-DDThh:mm:ssZ; datestamps a date or a UTC
  dateTime ending in Z; header status only "deleted"; <metadata> holds one element of another
  namespace, validated strictly (so oai_dc records are checked against the schema below);
  resumptionToken's cursor a non-negative and completeListSize a positive integer.
- oai_dc (http://www.openarchives.org/OAI/2.0/oai_dc.xsd): <oai_dc:dc> holds any number of the
  15 Dublin Core elements, in any order, and nothing else.
- Simple DC (http://dublincore.org/schemas/xmls/simpledc20021212.xsd): each element is a
  SimpleLiteral: text only (no child elements) and no attribute but xml:lang (an xs:language,
  as in the http://www.w3.org/2001/03/xml.xsd that schema imports).

Checked element by element against a copy of OAI-PMH.xsd (2004-10-12 revision, in
cessda/cessda.cmv.server src/main/resources/static/schemas/oai-pmh/OAI-PMH.xsd): description,
about and metadata content is `##other` with processContents strict there too, so an element
of a namespace these files do not define fails, as it would against the real schema set.

`oai_schema(folder)` writes them to `folder` and compiles the OAI-PMH one (which imports the
others), for lxml's `XMLSchema.assertValid`.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

DC_ELEMENTS = (
    "title",
    "creator",
    "subject",
    "description",
    "publisher",
    "contributor",
    "date",
    "type",
    "format",
    "identifier",
    "source",
    "language",
    "relation",
    "coverage",
    "rights",
)

XML_NS_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
  targetNamespace="http://www.w3.org/XML/1998/namespace">
  <xs:attribute name="lang" type="xs:language"/>
</xs:schema>
"""

SIMPLE_DC_XSD = (
    """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
  xmlns:dc="http://purl.org/dc/elements/1.1/"
  targetNamespace="http://purl.org/dc/elements/1.1/"
  elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xs:import namespace="http://www.w3.org/XML/1998/namespace" schemaLocation="xml.xsd"/>
  <xs:complexType name="SimpleLiteral" mixed="true">
    <xs:sequence/>
    <xs:attribute ref="xml:lang" use="optional"/>
  </xs:complexType>
"""
    + "".join(f'  <xs:element name="{name}" type="dc:SimpleLiteral"/>\n' for name in DC_ELEMENTS)
    + "</xs:schema>\n"
)

OAI_DC_XSD = (
    """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
  xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/"
  xmlns:dc="http://purl.org/dc/elements/1.1/"
  targetNamespace="http://www.openarchives.org/OAI/2.0/oai_dc/"
  elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xs:import namespace="http://purl.org/dc/elements/1.1/" schemaLocation="simpledc.xsd"/>
  <xs:element name="dc" type="oai_dc:oai_dcType"/>
  <xs:complexType name="oai_dcType">
    <xs:choice minOccurs="0" maxOccurs="unbounded">
"""
    + "".join(f'      <xs:element ref="dc:{name}"/>\n' for name in DC_ELEMENTS)
    + """    </xs:choice>
  </xs:complexType>
</xs:schema>
"""
)

SET_SPEC = r"([A-Za-z0-9\-_\.!~\*'\(\)])+(:[A-Za-z0-9\-_\.!~\*'\(\)]+)*"
PREFIX = r"[A-Za-z0-9\-_\.!~\*'\(\)]+"

OAI_PMH_XSD = f"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
  xmlns:oai="http://www.openarchives.org/OAI/2.0/"
  targetNamespace="http://www.openarchives.org/OAI/2.0/"
  elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xs:import namespace="http://www.openarchives.org/OAI/2.0/oai_dc/" schemaLocation="oai_dc.xsd"/>

  <xs:element name="OAI-PMH">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="responseDate" type="xs:dateTime"/>
        <xs:element name="request" type="oai:requestType"/>
        <xs:choice>
          <xs:element name="error" type="oai:errorType" maxOccurs="unbounded"/>
          <xs:element name="Identify" type="oai:IdentifyType"/>
          <xs:element name="ListMetadataFormats" type="oai:ListMetadataFormatsType"/>
          <xs:element name="ListSets" type="oai:ListSetsType"/>
          <xs:element name="GetRecord" type="oai:GetRecordType"/>
          <xs:element name="ListIdentifiers" type="oai:ListIdentifiersType"/>
          <xs:element name="ListRecords" type="oai:ListRecordsType"/>
        </xs:choice>
      </xs:sequence>
    </xs:complexType>
  </xs:element>

  <xs:complexType name="requestType">
    <xs:simpleContent>
      <xs:extension base="xs:anyURI">
        <xs:attribute name="verb" type="oai:verbType"/>
        <xs:attribute name="identifier" type="xs:anyURI"/>
        <xs:attribute name="metadataPrefix" type="oai:metadataPrefixType"/>
        <xs:attribute name="from" type="oai:UTCdatetimeType"/>
        <xs:attribute name="until" type="oai:UTCdatetimeType"/>
        <xs:attribute name="set" type="oai:setSpecType"/>
        <xs:attribute name="resumptionToken" type="xs:string"/>
      </xs:extension>
    </xs:simpleContent>
  </xs:complexType>

  <xs:simpleType name="verbType">
    <xs:restriction base="xs:string">
      <xs:enumeration value="Identify"/>
      <xs:enumeration value="ListMetadataFormats"/>
      <xs:enumeration value="ListSets"/>
      <xs:enumeration value="GetRecord"/>
      <xs:enumeration value="ListIdentifiers"/>
      <xs:enumeration value="ListRecords"/>
    </xs:restriction>
  </xs:simpleType>

  <xs:complexType name="errorType">
    <xs:simpleContent>
      <xs:extension base="xs:string">
        <xs:attribute name="code" use="required">
          <xs:simpleType>
            <xs:restriction base="xs:string">
              <xs:enumeration value="cannotDisseminateFormat"/>
              <xs:enumeration value="idDoesNotExist"/>
              <xs:enumeration value="badArgument"/>
              <xs:enumeration value="badVerb"/>
              <xs:enumeration value="noMetadataFormats"/>
              <xs:enumeration value="noRecordsMatch"/>
              <xs:enumeration value="badResumptionToken"/>
              <xs:enumeration value="noSetHierarchy"/>
            </xs:restriction>
          </xs:simpleType>
        </xs:attribute>
      </xs:extension>
    </xs:simpleContent>
  </xs:complexType>

  <xs:complexType name="IdentifyType">
    <xs:sequence>
      <xs:element name="repositoryName" type="xs:string"/>
      <xs:element name="baseURL" type="xs:anyURI"/>
      <xs:element name="protocolVersion">
        <xs:simpleType>
          <xs:restriction base="xs:string"><xs:enumeration value="2.0"/></xs:restriction>
        </xs:simpleType>
      </xs:element>
      <xs:element name="adminEmail" type="oai:emailType" maxOccurs="unbounded"/>
      <xs:element name="earliestDatestamp" type="oai:UTCdatetimeType"/>
      <xs:element name="deletedRecord">
        <xs:simpleType>
          <xs:restriction base="xs:string">
            <xs:enumeration value="no"/>
            <xs:enumeration value="persistent"/>
            <xs:enumeration value="transient"/>
          </xs:restriction>
        </xs:simpleType>
      </xs:element>
      <xs:element name="granularity">
        <xs:simpleType>
          <xs:restriction base="xs:string">
            <xs:enumeration value="YYYY-MM-DD"/>
            <xs:enumeration value="YYYY-MM-DDThh:mm:ssZ"/>
          </xs:restriction>
        </xs:simpleType>
      </xs:element>
      <xs:element name="compression" type="xs:string" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element name="description" type="oai:descriptionType" minOccurs="0"
        maxOccurs="unbounded"/>
    </xs:sequence>
  </xs:complexType>

  <xs:simpleType name="emailType">
    <xs:restriction base="xs:string"><xs:pattern value="\\S+@(\\S+\\.)+\\S+"/></xs:restriction>
  </xs:simpleType>

  <xs:complexType name="descriptionType">
    <xs:sequence><xs:any namespace="##other" processContents="strict"/></xs:sequence>
  </xs:complexType>

  <xs:complexType name="ListMetadataFormatsType">
    <xs:sequence>
      <xs:element name="metadataFormat" maxOccurs="unbounded">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="metadataPrefix" type="oai:metadataPrefixType"/>
            <xs:element name="schema" type="xs:anyURI"/>
            <xs:element name="metadataNamespace" type="xs:anyURI"/>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
    </xs:sequence>
  </xs:complexType>

  <xs:complexType name="ListSetsType">
    <xs:sequence>
      <xs:element name="set" maxOccurs="unbounded">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="setSpec" type="oai:setSpecType"/>
            <xs:element name="setName" type="xs:string"/>
            <xs:element name="setDescription" type="oai:descriptionType" minOccurs="0"
              maxOccurs="unbounded"/>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
      <xs:element name="resumptionToken" type="oai:resumptionTokenType" minOccurs="0"/>
    </xs:sequence>
  </xs:complexType>

  <xs:complexType name="GetRecordType">
    <xs:sequence><xs:element name="record" type="oai:recordType"/></xs:sequence>
  </xs:complexType>

  <xs:complexType name="ListRecordsType">
    <xs:sequence>
      <xs:element name="record" type="oai:recordType" maxOccurs="unbounded"/>
      <xs:element name="resumptionToken" type="oai:resumptionTokenType" minOccurs="0"/>
    </xs:sequence>
  </xs:complexType>

  <xs:complexType name="ListIdentifiersType">
    <xs:sequence>
      <xs:element name="header" type="oai:headerType" maxOccurs="unbounded"/>
      <xs:element name="resumptionToken" type="oai:resumptionTokenType" minOccurs="0"/>
    </xs:sequence>
  </xs:complexType>

  <xs:complexType name="recordType">
    <xs:sequence>
      <xs:element name="header" type="oai:headerType"/>
      <xs:element name="metadata" minOccurs="0">
        <xs:complexType>
          <xs:sequence><xs:any namespace="##other" processContents="strict"/></xs:sequence>
        </xs:complexType>
      </xs:element>
      <xs:element name="about" minOccurs="0" maxOccurs="unbounded">
        <xs:complexType>
          <xs:sequence><xs:any namespace="##other" processContents="strict"/></xs:sequence>
        </xs:complexType>
      </xs:element>
    </xs:sequence>
  </xs:complexType>

  <xs:complexType name="headerType">
    <xs:sequence>
      <xs:element name="identifier" type="xs:anyURI"/>
      <xs:element name="datestamp" type="oai:UTCdatetimeType"/>
      <xs:element name="setSpec" type="oai:setSpecType" minOccurs="0" maxOccurs="unbounded"/>
    </xs:sequence>
    <xs:attribute name="status" use="optional">
      <xs:simpleType>
        <xs:restriction base="xs:string"><xs:enumeration value="deleted"/></xs:restriction>
      </xs:simpleType>
    </xs:attribute>
  </xs:complexType>

  <xs:complexType name="resumptionTokenType">
    <xs:simpleContent>
      <xs:extension base="xs:string">
        <xs:attribute name="expirationDate" type="xs:dateTime" use="optional"/>
        <xs:attribute name="completeListSize" type="xs:positiveInteger" use="optional"/>
        <xs:attribute name="cursor" type="xs:nonNegativeInteger" use="optional"/>
      </xs:extension>
    </xs:simpleContent>
  </xs:complexType>

  <xs:simpleType name="UTCdatetimeType">
    <xs:union memberTypes="xs:date">
      <xs:simpleType>
        <xs:restriction base="xs:dateTime"><xs:pattern value=".*Z"/></xs:restriction>
      </xs:simpleType>
    </xs:union>
  </xs:simpleType>

  <xs:simpleType name="setSpecType">
    <xs:restriction base="xs:string"><xs:pattern value="{SET_SPEC}"/></xs:restriction>
  </xs:simpleType>

  <xs:simpleType name="metadataPrefixType">
    <xs:restriction base="xs:string"><xs:pattern value="{PREFIX}"/></xs:restriction>
  </xs:simpleType>
</xs:schema>
"""

FILES = {
    "xml.xsd": XML_NS_XSD,
    "simpledc.xsd": SIMPLE_DC_XSD,
    "oai_dc.xsd": OAI_DC_XSD,
    "OAI-PMH.xsd": OAI_PMH_XSD,
}


def oai_schema(folder: Path) -> etree.XMLSchema:
    """The OAI-PMH 2.0 response schema (with oai_dc for the records), compiled from `folder`."""
    for name, text in FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return etree.XMLSchema(etree.parse(str(folder / "OAI-PMH.xsd")))
